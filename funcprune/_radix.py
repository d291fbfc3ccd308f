"""Global selection: the exact cut of the ``k`` smallest keys across many tensors, by radix passes.

Part of the selection kernel (:mod:`funcprune._select` picks within one tensor; this picks across
all of a global pruning's tensors). An exact radix selection on the bit patterns of
non-negative keys, 16 bits per pass, counted with ``bincount`` chunk by chunk: O(n) time, no
concatenated copy of the keys, exact int64 counts past 2**31 entries. Ties at the cut go to the
lowest global index (NaNs of every payload tie, as in torch's top-k). One process sums the counts of
its tensors; with a ``reduce`` (a sum across processes, e.g. an ``all_reduce``) applied to every
pass's histogram, processes holding shards of the tensors find the same global cut, and ties are
then broken by a second radix selection over the tied entries' global indices (integer keys), so
the answer does not depend on how the tensors are sharded. Eager only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

_DIGIT_BITS = 16
_DIGITS = 1 << _DIGIT_BITS
INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
INF_BITS = {
    torch.float16: 0x7C00,
    torch.bfloat16: 0x7F80,
    torch.float32: 0x7F800000,
    torch.float64: 0x7FF0000000000000,
}  # +inf's bit pattern; NaNs lie above it
DEFAULT_CHUNK = 1 << 20
_TIE_BLOCK = 1 << 14  # entries a block of the tie split reads at once (its int64 temporaries: 128 KiB)


def _bits(key: torch.Tensor) -> torch.Tensor:
    """Integer view of non-negative floating keys: same order as the values (NaN after inf)."""
    return key.view(INT_VIEW[key.element_size()])


def _paired_chunks(key: torch.Tensor, live: torch.Tensor | None, chunk: int):
    """Yield ``(start, key_piece, live_piece)`` over the flattened tensors, ``chunk`` entries at a time."""
    flat, live_flat = key.reshape(-1), None if live is None else live.reshape(-1)
    for start in range(0, flat.numel(), chunk):
        yield start, flat[start : start + chunk], None if live_flat is None else live_flat[start : start + chunk]


def radix_select_keep(
    keys: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor | None],
    k: int,
    *,
    key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece,
    largest: bool = False,
    chunk: int = DEFAULT_CHUNK,
    **spread: Any,
) -> list:
    """Keep masks after dropping the ``k`` smallest (or largest) alive entries across all ``keys``.

    Eager only. ``key_fn`` maps a flat piece of a tensor in ``keys`` to its non-negative keys (floating,
    or integer), all of one dtype (e.g. ``abs`` and a cast to the common dtype); it runs chunk by chunk,
    so no full-size copy of the keys is ever made. ``k`` must not exceed the number of alive
    entries. Returns one bool mask per tensor, shaped like it. ``chunk`` bounds every temporary.
    ``spread`` (``reduce``, ``counted``, ``index_fn``, ``key_from_index``, ``index_total``) is for keys
    sharded over processes, as in :func:`radix_cut` and :func:`keep_from_cut`.
    """
    if k == 0:
        return [
            torch.ones_like(key, dtype=torch.bool) if live is None else live.clone() for key, live in zip(keys, alive)
        ]
    cut = radix_cut(keys, alive, k, key_fn=key_fn, largest=largest, chunk=chunk, **spread)
    return keep_from_cut(keys, alive, cut, key_fn=key_fn, largest=largest, chunk=chunk, **spread)


# ``radix_select_keep`` is ``keep_from_cut(keys, alive, radix_cut(keys, alive, k, ...), ...)``: the
# cut is split from the masks so that a caller (compat) can look at the tie band (how many alive
# keys equal the k-th one, how many of those are due) before deciding how to break it.


class RadixCut(NamedTuple):
    """Where the ``k`` smallest (or largest) alive keys end: found by :func:`radix_cut`.

    ``prefix`` is the bit pattern (in the radix's working integer type, order-flipped when
    ``largest``) of the k-th selected key; every alive key strictly before it is selected, and
    ``due`` of the ``ties`` alive keys equal to it. A tie straddles the cut iff ``due < ties``.
    ``nan`` is True when the k-th key is a NaN (NaNs of any payload tie in torch's top-k).
    """

    prefix: torch.Tensor
    due: int
    ties: int
    nan: bool

    @property
    def straddles(self) -> bool:
        """True when some but not all of the keys equal to the k-th one are selected."""
        return self.due < self.ties or self.nan


Reduce = Callable[[torch.Tensor], torch.Tensor]
IndexFn = Callable[[int, int, int], torch.Tensor]


def _sample(keys, key_fn, key_from_index: bool) -> torch.Tensor:
    """One key's worth of ``key_fn`` output (possibly empty): its dtype fixes the radix width."""
    if key_from_index:
        return key_fn(torch.zeros(1, dtype=torch.int64, device=keys[0].device))
    return key_fn(keys[0].reshape(-1)[:1])


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` are views of one storage (then writing to ``a`` writes to the caller's ``b``)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _cut_bits(key_fn, keys, largest, key_from_index: bool = False):
    """``(nbits, flip, bits_of)``: ``bits_of(piece)`` gives a piece's keys as ordered integers, a new tensor.

    Floating keys are read through their bit patterns (non-negative floats order like their
    patterns); integer keys (hashed random keys, indices) must be non-negative and are their own
    pattern. ``key_fn`` returns a view of its input (the caller's keys: read, never written) or a
    new tensor, which the clamp of NaN payloads and the flip for ``largest`` then reuse in place:
    one chunk-sized temporary per piece, not three.
    """
    sample = _sample(keys, key_fn, key_from_index)
    nbits = 8 * sample.element_size()
    flip = (1 << (nbits - 1)) - 1  # reverses the order of non-negative bit patterns
    work = torch.int32 if nbits <= 32 else torch.int64
    floating = sample.is_floating_point()
    nan_bits = INF_BITS[sample.dtype] + 1 if floating else None  # NaNs of every payload tie, just above +inf

    def bits_of(piece):
        key = key_fn(piece)
        b = (_bits(key) if floating else key).to(work)
        if _shares_memory(b, piece):  # the caller's own keys (no conversion copied them): work on a copy
            b = b.clone()
        if floating:
            b.clamp_(max=nan_bits)
        return b.neg_().add_(flip) if largest else b

    return nbits, flip, bits_of


def _pieces(keys, alive, chunk, index_fn: IndexFn | None, counted=None):
    """``(leaf, start, piece, live_piece, index_piece)`` over the counted leaves, ``chunk`` entries at a time.

    ``index_piece`` is ``index_fn(leaf, start, len(piece))`` (None without an ``index_fn``).
    """
    for leaf, (key, live) in enumerate(zip(keys, alive)):
        if counted is not None and not counted[leaf]:
            continue
        for start, piece, live_piece in _paired_chunks(key, live, chunk):
            index = None if index_fn is None else index_fn(leaf, start, piece.numel())
            yield leaf, start, piece, live_piece, index


def _histogram_cut(bits_and_inside, k: int, nbits: int, device, reduce: Reduce | None):
    """``(prefix, due, ties)`` of the k-th smallest of the integers that ``bits_and_inside()`` yields.

    ``bits_and_inside()`` yields ``(bits, inside)`` pairs (``inside`` a bool mask or None) for
    every chunk, afresh on each call: one call per pass of ``_DIGIT_BITS`` bits. ``reduce`` sums
    each pass's histogram across processes (then every process finds the same digit).
    """
    prefix = torch.zeros((), dtype=torch.int64, device=device)
    due = torch.tensor(k, dtype=torch.int64, device=device)
    ties = due
    for shift in range(max(nbits - _DIGIT_BITS, 0), -1, -_DIGIT_BITS):
        hist = torch.zeros(_DIGITS + 1, dtype=torch.int64, device=device)
        for b, inside_mask in bits_and_inside():
            # chunk-sized temporaries: one bool and one integer tensor besides ``b``, each reused in place
            inside = (b >> (shift + _DIGIT_BITS)) == (prefix >> (shift + _DIGIT_BITS))
            if inside_mask is not None:
                inside &= inside_mask
            digit = (b >> shift).bitwise_and_(_DIGITS - 1).masked_fill_(inside.logical_not_(), _DIGITS)
            del inside
            hist += torch.bincount(digit, minlength=_DIGITS + 1)
            del digit
        if reduce is not None:
            hist = reduce(hist)
        cum = hist[:_DIGITS].cumsum(0)
        digit = torch.searchsorted(cum, due)
        due = due - torch.where(digit > 0, cum[(digit - 1).clamp(min=0)], 0)
        prefix = prefix | (digit << shift)
        ties = hist[digit]
    return prefix, int(due), int(ties)


def radix_cut(
    keys: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor | None],
    k: int,
    *,
    key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece,
    largest: bool = False,
    chunk: int = DEFAULT_CHUNK,
    reduce: Reduce | None = None,
    counted: Sequence[bool] | None = None,
    index_fn: IndexFn | None = None,
    key_from_index: bool = False,
    index_total: int | None = None,
) -> RadixCut:
    """The cut of the ``k`` smallest (or largest) alive keys across ``keys``, without selecting.

    The histogram passes of :func:`radix_select_keep` (same arguments, ``1 <= k <= alive``):
    O(n) time, chunk-sized temporaries, no concatenated copy. Eager only.

    For a selection spread over processes (each holding shards of the ``keys``): ``reduce`` sums a
    count tensor across them (in place or not; it is applied to every pass's histogram, so ``k``
    and the returned counts are global), and ``counted[i]`` False leaves the ``i``-th tensor out of
    this process's counts (a replica another process counts). With ``key_from_index`` the keys
    are ``key_fn(index_fn(i, start, count))``, a function of the entries' global indices (hashed
    random keys) rather than of their values. Integer keys must be non-negative. ``index_total`` (the
    global entry count, which bounds the indices) is read by :func:`keep_from_cut` only.

    Example:
      >>> cut = radix_cut([torch.tensor([3.0, 1.0, 1.0, 2.0])], [None], 1)
      >>> cut.due, cut.ties, cut.straddles
      (1, 2, True)
    """
    device = keys[0].device
    nbits, flip, bits_of = _cut_bits(key_fn, keys, largest, key_from_index)

    def bits_and_inside():
        for _, _, piece, live_piece, index in _pieces(
            keys, alive, chunk, index_fn if key_from_index else None, counted
        ):
            yield bits_of(index if key_from_index else piece), live_piece

    prefix, due, ties = _histogram_cut(bits_and_inside, k, nbits, device, reduce)
    sample = _sample(keys, key_fn, key_from_index)
    plain = int(flip - prefix) if largest else int(prefix)  # the k-th key's own bit pattern
    return RadixCut(prefix, due, ties, sample.is_floating_point() and plain > INF_BITS[sample.dtype])


def keep_from_cut(
    keys: Sequence[torch.Tensor],
    alive: Sequence[torch.Tensor | None],
    cut: RadixCut,
    *,
    key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece,
    largest: bool = False,
    chunk: int = DEFAULT_CHUNK,
    reduce: Reduce | None = None,
    counted: Sequence[bool] | None = None,
    index_fn: IndexFn | None = None,
    key_from_index: bool = False,
    index_total: int | None = None,
) -> list:
    """Keep masks (one per key, its shape) after dropping what ``cut`` selects; ties by lowest global index.

    With the arguments given to :func:`radix_cut`. Where no tie straddles the cut this is the only
    answer, so any exact selection (torch's top-k included) gives the same masks.

    Without ``index_fn`` the global index is the position in ``keys`` (tensor order, then
    row-major), and the due ties are counted off in that order. With ``index_fn`` (shards of
    tensors spread over processes, see :func:`radix_cut`), the tied entries' global indices are
    themselves radix-selected (the ``due`` smallest, histograms summed by ``reduce``), so every
    process drops the same ties whatever the sharding; only when a tie straddles the cut.

    Example:
      >>> keys = [torch.tensor([3.0, 1.0, 1.0, 2.0])]
      >>> keep_from_cut(keys, [None], radix_cut(keys, [None], 1))
      [tensor([ True, False,  True,  True])]
    """
    if index_fn is not None:
        return _keep_by_index(
            keys, alive, cut, key_fn, largest, chunk, reduce, counted, index_fn, key_from_index, index_total
        )
    device = keys[0].device
    _, _, bits_of = _cut_bits(key_fn, keys, largest)
    prefix, due = cut.prefix, cut.due
    masks, ties_seen = [], 0
    for key, live in zip(keys, alive):
        keep = torch.empty(key.numel(), dtype=torch.bool, device=device)
        for start, piece, live_piece in _paired_chunks(key, live, chunk):
            b = bits_of(piece)
            if not cut.straddles or ties_seen >= due:  # every tie left is dropped / kept
                dropped = b <= prefix if ties_seen < due else b < prefix
            else:
                tie = b == prefix
                if live_piece is not None:
                    tie &= live_piece
                here = int(tie.sum())
                if ties_seen + here <= due:  # all of this piece's ties go
                    dropped = (b < prefix) | tie
                else:  # the piece where the due ties run out: the first ones, in index order
                    dropped = (b < prefix) | (tie & (tie.cumsum(0) + ties_seen <= due))
                ties_seen += here
            piece_keep = dropped.logical_not_()
            if live_piece is not None:
                piece_keep &= live_piece
            keep[start : start + piece.numel()] = piece_keep
        masks.append(keep.view(key.shape))
    return masks


def _keep_by_index(
    keys, alive, cut, key_fn, largest, chunk, reduce, counted, index_fn, key_from_index, index_total: int | None = None
) -> list:
    """:func:`keep_from_cut` with ties broken by a second radix selection over global indices.

    One pass over every entry writes the masks, keeping every tie for now and noting the blocks of
    ``_TIE_BLOCK`` entries that hold ties. Only when a tie straddles the cut are the tied entries'
    global indices radix-selected, over those blocks alone (the ties are few: an O(n) rescan of
    every entry per 16 index bits, with chunk-sized int64 temporaries, is what this avoids), and
    the due ones dropped there. ``index_total``
    (global entries, the same on every process) bounds the indices: fewer passes of 16 bits.
    """
    device = keys[0].device
    _, _, bits_of = _cut_bits(key_fn, keys, largest, key_from_index)
    prefix, straddles = cut.prefix, cut.straddles

    def bits(piece, index):
        return bits_of(index if key_from_index else piece)

    masks, tied = [], []  # tied: (leaf, start, count) of the chunks holding alive ties, when the cut straddles
    for leaf, (key, live) in enumerate(zip(keys, alive)):
        keep = torch.empty(key.numel(), dtype=torch.bool, device=device)
        for start, piece, live_piece in _paired_chunks(key, live, chunk):
            index = index_fn(leaf, start, piece.numel()) if key_from_index else None
            b = bits(piece, index)
            piece_keep = (b > prefix) if not straddles else (b >= prefix)  # not straddling: every tie goes
            if live_piece is not None:
                piece_keep &= live_piece
            keep[start : start + piece.numel()] = piece_keep
            if straddles:
                tie = (b == prefix) & piece_keep
                for sub in range(0, piece.numel(), _TIE_BLOCK):  # note the tied blocks, not whole chunks
                    if int(tie[sub : sub + _TIE_BLOCK].sum()):
                        tied.append((leaf, start + sub, min(_TIE_BLOCK, piece.numel() - sub)))
        masks.append(keep.view(key.shape))
    if not straddles:
        return masks

    def tie_and_index(leaf, start, count):
        index = index_fn(leaf, start, count)
        piece = keys[leaf].reshape(-1)[start : start + count]
        tie = bits(piece, index) == prefix
        live = alive[leaf]
        return (tie if live is None else tie & live.reshape(-1)[start : start + count]), index

    def tied_indices():
        for leaf, start, count in tied:
            if counted is None or counted[leaf]:
                tie, index = tie_and_index(leaf, start, count)
                yield index, tie

    nbits = (
        64
        if index_total is None
        else max(_DIGIT_BITS, -(-max(index_total - 1, 1).bit_length() // _DIGIT_BITS) * _DIGIT_BITS)
    )
    last_tie, _, _ = _histogram_cut(tied_indices, cut.due, nbits, device, reduce)  # every tie up to it goes
    for leaf, start, count in tied:
        tie, index = tie_and_index(leaf, start, count)
        masks[leaf].view(-1)[start : start + count] &= (tie & (index <= last_tie)).logical_not_()
    return masks
