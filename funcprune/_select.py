"""Vectorized selection primitives: the only place that knows how to pick "the k smallest survivors".

Two strategies, chosen by what is static:

* ``select``: one flat tensor. With a Python-int ``k`` it is an unsorted ``topk`` (the same
  positions torch's sorted ``topk`` picks, ties included, at a fraction of the cost); on real CPU
  tensors a k-th value threshold comes first and is kept only when no tie straddles the cut
  (then every top-k agrees), another 3-5x faster (CUDA's ``topk`` is a radix select already,
  and the threshold needs host syncs). With a tensor ``k`` (a per-element count under ``vmap``,
  or a swept amount) it is a sorted ``topk`` at a static bound ``k_max`` followed by a
  per-element cutoff, so no shape depends on data.
* ``radix_select_keep``: many tensors at once (global pruning), eager only. An exact radix
  selection on the bit patterns of non-negative keys, 16 bits per pass, counted with ``bincount``
  chunk by chunk: O(n) time, no concatenated copy of the keys, exact int64 counts past 2**31
  entries. Ties at the threshold go to the lowest global index.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from ._amount import _is_concrete

Count = Union[int, torch.Tensor]

_DIGIT_BITS = 16
_DIGITS = 1 << _DIGIT_BITS
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
DEFAULT_CHUNK = 1 << 20
_FAST_MIN = 1 << 14  # below this, topk is as fast as the threshold path
_SAMPLE = 1 << 13  # sample size bracketing the k-th value: ~4% of the keys fall inside the bracket


def as_keep(scores: torch.Tensor, mask: Optional[torch.Tensor], what: str = "mask") -> Optional[torch.Tensor]:
    """The existing mask as bool on the scores' device (None stays None), after a shape check."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(mask).__name__}")
    if mask.shape != scores.shape:
        raise ValueError(f"{what} has shape {tuple(mask.shape)} but the scores have shape {tuple(scores.shape)}")
    mask = mask.to(device=scores.device)
    return mask if mask.dtype == torch.bool else mask != 0


def count_kept(keep: torch.Tensor, dims=None) -> Union[int, torch.Tensor]:
    """Number of kept entries: a Python int on real eager tensors, a tensor otherwise."""
    total = keep.sum(dims) if dims is not None else keep.sum()
    return int(total) if _is_concrete(keep) else total


def _worst(dtype: torch.dtype, largest: bool):
    """The key value that is never selected before a real one."""
    if dtype.is_floating_point:
        return -float("inf") if largest else float("inf")
    info = torch.iinfo(dtype)
    return info.min if largest else info.max


def _select_by_threshold(key: torch.Tensor, k: int, largest: bool) -> Optional[torch.Tensor]:
    """Eager fast path of :func:`select`: the ``k`` extreme entries as ``key <= v`` (``key >= v``).

    The k-th value ``v`` comes from a 4-sigma bracket read off a strided sample: one counting
    pass, one pass gathering the few keys inside the bracket, a ``kthvalue`` on those. It is used
    only when it is certified to be *the* unique answer: exactly ``k`` entries lie at or beyond
    ``v`` (no tie straddles the cut, NaN ranks as the largest key, as ``topk`` ranks it). Then it
    equals torch's ``topk`` positions whatever their tie-breaking. Otherwise (ties at the cut, an
    unlucky bracket, integer keys) it returns None and the caller runs ``topk``.
    """
    if not key.dtype.is_floating_point:
        return None
    n = key.numel()
    rank = k if not largest else n - k + 1  # 1-based rank of v among the keys, smallest first
    sample = key[:: max(n // _SAMPLE, 1)]
    s = sample.numel()
    pos = (rank - 0.5) * s / n
    margin = 4.0 * math.sqrt(s * (rank / n) * (1.0 - rank / n)) + 2.0
    lo_i, hi_i = int(pos - margin), int(pos + margin)
    # Two O(s) selections: a CPU sort of even a few thousand keys costs as much as a pass over n.
    lo = sample.kthvalue(lo_i + 1).values if lo_i > 0 else None
    hi = sample.kthvalue(hi_i + 1).values if hi_i < s - 1 else None
    inside = torch.ones_like(key, dtype=torch.bool) if lo is None else key >= lo
    if hi is not None:
        inside &= key <= hi
    below = 0 if lo is None else int(torch.count_nonzero(key < lo))
    candidates = key[inside]  # eager only: a data-dependent shape, never returned
    if not below < rank <= below + candidates.numel():
        return None
    v = candidates.kthvalue(rank - below).values
    if largest:  # dropped: not below v (NaN included, as topk counts it the largest)
        if n - below - int(torch.count_nonzero(candidates < v)) != k:
            return None
        return (key < v).logical_not_()
    if below + int(torch.count_nonzero(candidates <= v)) != k:
        return None
    return key <= v


def select(key: torch.Tensor, k: Count, *, largest: bool, alive: Optional[torch.Tensor] = None,
           k_max: Optional[int] = None) -> torch.Tensor:
    """Bool mask (shape of the flat ``key``) of the ``k`` largest or smallest entries among ``alive``.

    Args:
      key: a 1-D tensor of scores.
      k: how many to select; a Python int, or an int64 0-d tensor (possibly batched by ``vmap``).
      largest: select the largest keys (else the smallest).
      alive: optional bool mask of the candidates; dead entries are never selected while
        ``k`` does not exceed the number alive.
      k_max: a static upper bound on a tensor ``k`` (defaults to ``key.numel()``).
    """
    n = key.numel()
    if alive is not None:
        key = key.masked_fill(~alive, _worst(key.dtype, largest))
    if isinstance(k, int):
        if 0 < k < n and n >= _FAST_MIN and key.device.type == "cpu" and _is_concrete(key):
            chosen = _select_by_threshold(key, k, largest)
            if chosen is not None:
                return chosen
        chosen = torch.zeros(n, dtype=torch.bool, device=key.device)
        if k == 0:
            return chosen
        idx = torch.topk(key, k, largest=largest, sorted=False).indices
        # Filling a fresh tensor in place saves a copy; under vmap the indices are batched.
        return chosen.index_fill_(0, idx, True) if _is_concrete(idx) else chosen.index_fill(0, idx, True)
    k_max = n if k_max is None else min(k_max, n)
    chosen = torch.zeros(n, dtype=torch.bool, device=key.device)
    if k_max == 0:
        return chosen
    idx = torch.topk(key, k_max, largest=largest, sorted=True).indices
    take = torch.arange(k_max, device=key.device) < k
    return chosen.scatter(0, idx, take)


def _bits(key: torch.Tensor) -> torch.Tensor:
    """Integer view of non-negative floating keys: same order as the values (NaN after inf)."""
    return key.view(_INT_VIEW[key.element_size()])


def _paired_chunks(key: torch.Tensor, live: Optional[torch.Tensor], chunk: int):
    """Yield ``(start, key_piece, live_piece)`` over the flattened tensors, ``chunk`` entries at a time."""
    flat, live_flat = key.reshape(-1), None if live is None else live.reshape(-1)
    for start in range(0, flat.numel(), chunk):
        yield start, flat[start:start + chunk], None if live_flat is None else live_flat[start:start + chunk]


def radix_select_keep(keys: Sequence[torch.Tensor], alive: Sequence[Optional[torch.Tensor]], k: int,
                      *, key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece,
                      largest: bool = False, chunk: int = DEFAULT_CHUNK) -> list:
    """Keep masks after dropping the ``k`` smallest (or largest) alive entries across all ``keys``.

    Eager only. ``key_fn`` maps a flat piece of a tensor in ``keys`` to its non-negative floating
    keys, all of one dtype (e.g. ``abs`` and a cast to the common dtype); it runs chunk by chunk,
    so no full-size copy of the keys is ever made. ``k`` must not exceed the number of alive
    entries. Returns one bool mask per tensor, shaped like it. ``chunk`` bounds every temporary.
    """
    device = keys[0].device
    nbits = 8 * key_fn(keys[0].reshape(-1)[:1]).element_size()
    flip = (1 << (nbits - 1)) - 1  # reverses the order of non-negative bit patterns
    work = torch.int32 if nbits <= 32 else torch.int64

    def bits_of(piece):
        b = _bits(key_fn(piece)).to(work)
        return flip - b if largest else b

    if k == 0:
        return [torch.ones_like(key, dtype=torch.bool) if live is None else live.clone()
                for key, live in zip(keys, alive)]
    # Find the bit pattern `prefix` of the k-th selected key, 16 bits per pass, most significant first.
    prefix = torch.zeros((), dtype=torch.int64, device=device)
    due = torch.tensor(k, dtype=torch.int64, device=device)  # still to select at and below `prefix`
    for shift in range(max(nbits - _DIGIT_BITS, 0), -1, -_DIGIT_BITS):
        hist = torch.zeros(_DIGITS + 1, dtype=torch.int64, device=device)
        for key, live in zip(keys, alive):
            for _, piece, live_piece in _paired_chunks(key, live, chunk):
                b = bits_of(piece)
                inside = (b >> (shift + _DIGIT_BITS)) == (prefix >> (shift + _DIGIT_BITS))
                if live_piece is not None:
                    inside &= live_piece
                hist += torch.bincount(torch.where(inside, (b >> shift) & (_DIGITS - 1), _DIGITS),
                                       minlength=_DIGITS + 1)
        cum = hist[:_DIGITS].cumsum(0)
        digit = torch.searchsorted(cum, due)
        due = due - torch.where(digit > 0, cum[(digit - 1).clamp(min=0)], 0)
        prefix = prefix | (digit << shift)
        ties = hist[digit]
    # Every alive key below `prefix` goes; of the keys equal to it, the first `due` in index order.
    all_ties = bool(due == ties)
    masks, ties_seen = [], torch.zeros((), dtype=torch.int64, device=device)
    for key, live in zip(keys, alive):
        keep = torch.empty(key.numel(), dtype=torch.bool, device=device)
        for start, piece, live_piece in _paired_chunks(key, live, chunk):
            b = bits_of(piece)
            if all_ties:
                dropped = b <= prefix
            else:
                tie = b == prefix
                if live_piece is not None:
                    tie &= live_piece
                dropped = (b < prefix) | (tie & (tie.cumsum(0) + ties_seen <= due))
                ties_seen = ties_seen + tie.sum()
            piece_keep = ~dropped
            if live_piece is not None:
                piece_keep &= live_piece
            keep[start:start + piece.numel()] = piece_keep
        masks.append(keep.view(key.shape))
    return masks


# --- Exact cuts and torch's tie order (used by funcprune.compat) -----------------------------------
#
# ``radix_select_keep`` == ``keep_from_cut(keys, alive, radix_cut(keys, alive, k, ...), ...)``: the
# cut is split from the masks so that a caller can look at the tie band (how many alive keys equal
# the k-th one, how many of those are due) before deciding how to break it.

from typing import NamedTuple  # noqa: E402  (kept next to the code below, which alone uses it)


class RadixCut(NamedTuple):
    """Where the ``k`` smallest (or largest) alive keys end: found by :func:`radix_cut`.

    ``prefix`` is the bit pattern (in the radix's working integer type, order-flipped when
    ``largest``) of the k-th selected key; every alive key strictly before it is selected, and
    ``due`` of the ``ties`` alive keys equal to it. A tie straddles the cut iff ``due < ties``.
    ``nan`` is True when the k-th key is a NaN (NaNs of any payload tie in ``topk``).
    """

    prefix: torch.Tensor
    due: int
    ties: int
    nan: bool

    @property
    def straddles(self) -> bool:
        """True when some but not all of the keys equal to the k-th one are selected."""
        return self.due < self.ties or self.nan


def _cut_bits(key_fn, keys, largest):
    nbits = 8 * key_fn(keys[0].reshape(-1)[:1]).element_size()
    flip = (1 << (nbits - 1)) - 1  # reverses the order of non-negative bit patterns
    work = torch.int32 if nbits <= 32 else torch.int64

    def bits_of(piece):
        b = _bits(key_fn(piece)).to(work)
        return flip - b if largest else b

    return nbits, flip, bits_of


def radix_cut(keys: Sequence[torch.Tensor], alive: Sequence[Optional[torch.Tensor]], k: int, *,
              key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece, largest: bool = False,
              chunk: int = DEFAULT_CHUNK) -> RadixCut:
    """The cut of the ``k`` smallest (or largest) alive keys across ``keys``, without selecting.

    The histogram passes of :func:`radix_select_keep` (same arguments, ``1 <= k <= alive``):
    O(n) time, chunk-sized temporaries, no concatenated copy. Eager only.

    Example:
      >>> cut = radix_cut([torch.tensor([3.0, 1.0, 1.0, 2.0])], [None], 1)
      >>> cut.due, cut.ties, cut.straddles
      (1, 2, True)
    """
    device = keys[0].device
    nbits, flip, bits_of = _cut_bits(key_fn, keys, largest)
    prefix = torch.zeros((), dtype=torch.int64, device=device)
    due = torch.tensor(k, dtype=torch.int64, device=device)
    ties = due
    for shift in range(max(nbits - _DIGIT_BITS, 0), -1, -_DIGIT_BITS):
        hist = torch.zeros(_DIGITS + 1, dtype=torch.int64, device=device)
        for key, live in zip(keys, alive):
            for _, piece, live_piece in _paired_chunks(key, live, chunk):
                b = bits_of(piece)
                inside = (b >> (shift + _DIGIT_BITS)) == (prefix >> (shift + _DIGIT_BITS))
                if live_piece is not None:
                    inside &= live_piece
                hist += torch.bincount(torch.where(inside, (b >> shift) & (_DIGITS - 1), _DIGITS),
                                       minlength=_DIGITS + 1)
        cum = hist[:_DIGITS].cumsum(0)
        digit = torch.searchsorted(cum, due)
        due = due - torch.where(digit > 0, cum[(digit - 1).clamp(min=0)], 0)
        prefix = prefix | (digit << shift)
        ties = hist[digit]
    plain = int(flip - prefix) if largest else int(prefix)  # the k-th key's own bit pattern
    inf_bits = int(_bits(torch.tensor(float("inf"), dtype=key_fn(keys[0].reshape(-1)[:1]).dtype)))
    return RadixCut(prefix, int(due), int(ties), plain > inf_bits)


def keep_from_cut(keys: Sequence[torch.Tensor], alive: Sequence[Optional[torch.Tensor]], cut: RadixCut, *,
                  key_fn: Callable[[torch.Tensor], torch.Tensor] = lambda piece: piece, largest: bool = False,
                  chunk: int = DEFAULT_CHUNK) -> list:
    """Keep masks (one per key, its shape) after dropping what ``cut`` selects; ties by lowest global index.

    With the arguments given to :func:`radix_cut`. Where no tie straddles the cut this is the only
    answer, so any exact selection (torch's ``topk`` included) gives the same masks.

    Example:
      >>> keys = [torch.tensor([3.0, 1.0, 1.0, 2.0])]
      >>> keep_from_cut(keys, [None], radix_cut(keys, [None], 1))
      [tensor([ True, False,  True,  True])]
    """
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
            keep[start:start + piece.numel()] = piece_keep
        masks.append(keep.view(key.shape))
    return masks


def torch_order_select(key: torch.Tensor, k: int, *, largest: bool, alive: Optional[torch.Tensor] = None,
                       unique_first: bool = True) -> torch.Tensor:
    """Bool mask (``key``'s shape) of the ``k`` alive entries ``torch.nn.utils.prune`` picks, ties included.

    torch's CPU ``topk`` (``aten/src/ATen/native/TopKImpl.h``) runs ``std::nth_element`` (or
    ``std::partial_sort`` when ``64 * k <= n``) over ``(value, index)`` pairs with a comparator
    that looks at the values only (NaN the largest). Which of several equal values it keeps is
    therefore whatever those algorithms leave, and depends on every value of the vector it is
    given. torch gives it the alive entries in index order (``t[mask == 1]``, raveled); so does
    this function, so the choice is torch's, not just the count. Where no tie straddles the cut
    the result is the same for every exact selection, and the certified threshold of
    :func:`select` answers without ``topk``. ``sorted`` does not change the set ``topk`` picks
    (only the order of the first ``k``), so it is left off. Eager tensors only for ``alive``
    (boolean indexing); on ``meta`` or under transforms it is :func:`select`. Pass
    ``unique_first=False`` when a tie is known to straddle the cut (skips the threshold try).

    Example:
      >>> torch_order_select(torch.tensor([5.0, 1.0, 2.0, 1.0]), 1, largest=False,
      ...                    alive=torch.tensor([True, False, True, True]))
      tensor([False, False, False,  True])
    """
    if not _is_concrete(key) or (alive is not None and not _is_concrete(alive)):
        return select(key.reshape(-1), k, largest=largest,
                      alive=None if alive is None else alive.reshape(-1)).view(key.shape)
    flat = key.reshape(-1)
    live = None if alive is None else alive.reshape(-1)
    cand = flat if live is None else flat[live]  # the vector torch's topk sees
    if k == 0:
        chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device)
    else:
        chosen = None
        if unique_first and 0 < k < cand.numel() and cand.numel() >= _FAST_MIN and cand.device.type == "cpu":
            chosen = _select_by_threshold(cand, k, largest)  # only when the answer is unique
        if chosen is None:
            idx = torch.topk(cand, k, largest=largest, sorted=False).indices
            chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device).index_fill_(0, idx, True)
    if live is None:
        return chosen.view(key.shape)
    return torch.zeros_like(live).masked_scatter_(live, chosen).view(key.shape)
