"""Gather-free selections over tensors that may be DTensor shards: global, per-tensor and per-channel.

One code path serves DTensors and plain tensors (a plain tensor is a one-process "shard" of
itself), so a one-process run of the hash stream reproduces a distributed mask bit for bit.

* Unstructured (L1, random): the radix cut of :mod:`funcprune._radix` over the local shards, each
  pass's 64K-bin histogram summed across the mesh (``all_reduce``); ties at the cut go to the lowest
  global flat index (leaf order, then row-major in the full tensor), by a second radix selection
  over the tied entries' global indices. Replicas (``Replicate`` mesh dims) count once.
* Structured (L``n``, random): one float64 per channel crosses the wire (an ``all_reduce`` of a
  channels-sized vector of per-shard partial sums, or max/min, of ``|x|**p``; no shard moves), then
  every rank runs the single-process kernel on the same norm vector. See :func:`channel_norms`.
* Random keys: a counter-based hash of ``(seed, global flat index)`` (the *hash stream*): the same
  mask for the same seed whatever the world size and placement, no full-size draw anywhere. It is
  not torch's stream (``torch.rand``), so it does not reproduce torch's random masks.

Eager only: collectives, and Python ints read from count tensors.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Any, TypeVar

import torch

from . import _amount, _dtensor, _radix
from ._amount import Amount
from ._norms import channel_norm

_M32 = 0xFFFFFFFF
_H = TypeVar("_H", int, torch.Tensor)  # the hash rounds run on Python ints (the seed) and int64 tensors


# ----------------------------------------------------------------------------------------------
# The hash stream: int64 arithmetic whose intermediates stay below 2**63 (no wrap-around anywhere).


def _mul32(h: _H, c: int) -> _H:
    """``(h * c) mod 2**32`` for 32-bit ``h`` and ``c``, in int64 without overflow (16-bit halves of ``c``)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(h: _H) -> _H:
    """A bijective 32-bit finalizer (the "lowbias32" xor-shift-multiply rounds)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def hash_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    """Pseudo-random non-negative int64 keys (below 2**62) of ``(seed, index)``, for int64 ``index >= 0``.

    A counter-based stream: entry ``i`` gets the same key wherever it is computed, so any sharding
    of the indices gives the same keys. The seed is mixed in nonlinearly (pre-hashed, and again
    after the first round), so ``hash_keys(seed ^ d, i)`` is not ``hash_keys(seed, i ^ d)``.

    Example:
      >>> a = hash_keys(7, torch.arange(4))
      >>> bool((a == hash_keys(7, torch.arange(4))).all()), bool((a >= 0).all())
      (True, True)
    """
    s0, s1 = seed & _M32, (seed >> 32) & _M32
    k0 = _mix32((s0 + 0x9E3779B9) & _M32)  # the seed pre-hashed (Python ints): it enters each round
    k1 = _mix32(((s1 ^ k0) + 0x7F4A7C15) & _M32)  # nonlinearly, so no seed change equals an index change
    lo, hi = index & _M32, index >> 32
    a = _mix32(_mix32(lo ^ s0) ^ k0)
    b = _mix32(_mix32(hi ^ s1) ^ a ^ k1)
    a = _mix32(a ^ _mul32(b, 0x9E3779B9) ^ k1)
    return ((a >> 1) << 31) | (b >> 1)


def draw_seed(generator: torch.Generator | None, tensors: Sequence[torch.Tensor]) -> int:
    """One 63-bit seed from ``generator`` (or the global RNG); for DTensors, checked equal on every rank.

    Raises:
      ValueError: ranks drew different seeds (their RNG states differ: seed them alike).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))
    reduce = None if _dtensor.outside_mesh(tensors) else _dtensor.mesh_sum(_dtensor.mesh_of(tensors), "max")
    if reduce is not None:  # max(seed) == -max(-seed) iff every rank drew the same seed
        both = reduce(torch.tensor([seed, -seed], dtype=torch.int64, device=_dtensor.local(tensors[0]).device))
        if int(both[0]) != -int(both[1]):
            raise ValueError(
                f"ranks drew different random seeds ({-int(both[1])} .. {int(both[0])}): seed every "
                f"rank's RNG alike (torch.manual_seed) or pass a generator seeded alike"
            )
    return seed


# ----------------------------------------------------------------------------------------------
# Leaves as local shards.


class _Shards:
    """Local views of some leaves (DTensors on one mesh, or plain tensors) and their global bookkeeping."""

    def __init__(self, leaves: Sequence[torch.Tensor], keeps: Sequence[torch.Tensor | None]) -> None:
        for i, t in enumerate(list(leaves) + [k for k in keeps if k is not None]):  # backstop: callers check first
            if _dtensor.is_dtensor(t):
                _dtensor.check_placements(f"leaf {i}", t)
        self.leaves = list(leaves)
        self.locals = [_dtensor.local(t).detach() for t in leaves]
        self.keeps = [None if k is None else _dtensor.local(k) for k in keeps]
        self.counted = [_dtensor.counts_here(t) for t in leaves]
        self.reduce = _dtensor.mesh_sum(_dtensor.mesh_of(leaves))
        self.bases, base = [], 0
        for t in leaves:
            self.bases.append(base)
            base += _dtensor.numel(t)
        self.total = base

    def index(self, leaf: int, start: int, count: int) -> torch.Tensor:
        """Global flat indices (across the leaves, in order) of local entries of leaf ``leaf``."""
        return _dtensor.global_index(self.leaves[leaf], start, count, self.bases[leaf])

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed across the mesh (unchanged for plain tensors)."""
        return values if self.reduce is None else self.reduce(values)

    def alive(self) -> int:
        """Surviving entries over all leaves (every entry counted once across the mesh)."""
        device = self.locals[0].device
        here = torch.zeros((), dtype=torch.int64, device=device)
        for t, keep, counted in zip(self.locals, self.keeps, self.counted):
            if counted:
                here += t.numel() if keep is None else keep.sum()
        return int(self.sum(here.reshape(1))[0])

    def wrap(self, local_masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Local masks as masks laid out like the leaves."""
        return [_dtensor.like_param(m, t) for m, t in zip(local_masks, self.leaves)]


def call_fingerprint(
    names: Sequence[str],
    leaves: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor | None],
    amount: Amount,
    method: str,
) -> dict[str, str]:
    """What every rank of one global selection must agree on, part by part (each part a short string)."""
    value = float(amount) if isinstance(amount, torch.Tensor) else amount
    return {
        "amount": f"{value!r} ({type(amount).__name__})",
        "method": method,
        "leaf names": repr(list(names)),
        "shapes": repr([tuple(t.shape) for t in leaves]),
        "dtypes": repr([str(t.dtype).replace("torch.", "") for t in leaves]),
        "prior masks": repr([name for name, keep in zip(names, keeps) if keep is not None]),
    }


def _hash62(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 2


def agreed_alive(shards: _Shards, fingerprint: dict[str, str], amount: Amount) -> int:
    """:meth:`_Shards.alive`, checking on the way that every rank of the mesh made the same call.

    The survivors' count and the fingerprint travel in one ``all_reduce`` (max) of a small int64
    vector: every part's hash and its negation (equal on every rank iff max(h) == -max(-h)), the
    amount's float64 bits likewise (for the message's range), and each rank's count in its own slot
    (summed afterwards). It is the selection's first collective and does not depend on the dtypes,
    so ranks that disagree (another amount, tree, dtype, prior masks) all raise here instead of
    desynchronizing the histogram passes.

    Raises:
      ValueError: on every rank, naming the parts that differ and this rank's value of each.
    """
    if shards.reduce is None:
        return shards.alive()
    mesh = _dtensor.mesh_of(shards.leaves)
    device = shards.locals[0].device
    hashes = [_hash62(text) for text in fingerprint.values()]
    value = float(amount) if isinstance(amount, (torch.Tensor, int, float)) else 0.0
    bits = struct.unpack("<q", struct.pack("<d", abs(value)))[0]  # non-negative floats order as their bits
    here = torch.zeros((), dtype=torch.int64, device=device)
    for t, keep, counted in zip(shards.locals, shards.keeps, shards.counted):
        if counted:
            here += t.numel() if keep is None else keep.sum()
    slots = torch.zeros(mesh.size(), dtype=torch.int64, device=device)
    coordinate = mesh.get_coordinate()
    slot = 0
    for c, size in zip(coordinate, mesh.shape):
        slot = slot * size + c
    slots[slot] = here
    head = torch.tensor(hashes + [-h for h in hashes] + [bits, -bits], dtype=torch.int64, device=device)
    reduce_max = _dtensor.mesh_sum(mesh, "max")
    assert reduce_max is not None  # shards.reduce is set: the leaves are DTensors on a mesh
    vector = reduce_max(torch.cat([head, slots]))
    parts = len(hashes)
    top, low = vector[:parts].tolist(), [-v for v in vector[parts : 2 * parts].tolist()]
    differ = [name for name, hi, lo in zip(fingerprint, top, low) if hi != lo]
    if differ:
        lo_bits, hi_bits = -int(vector[2 * parts + 1]), int(vector[2 * parts])
        span = struct.unpack("<d", struct.pack("<q", lo_bits))[0], struct.unpack("<d", struct.pack("<q", hi_bits))[0]
        mine = "; ".join(f"{name}: {fingerprint[name][:200]}" for name in differ)
        ranged = f" (amounts on the ranks span {span[0]!r} .. {span[1]!r})" if "amount" in differ else ""
        raise ValueError(
            f"the ranks of one global selection disagree about its {', '.join(differ)}{ranged}; every "
            f"rank must make the same call (same amount, method, tree, dtypes, prior masks). "
            f"This rank has {mine}"
        )
    return int(vector[2 * parts + 2 :].sum())


def select_global(
    leaves: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor | None],
    amount: Amount,
    *,
    method: str,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
    chunk: int = _radix.DEFAULT_CHUNK,
    largest: bool = False,
    names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """Keep masks after pruning ``amount`` of the surviving entries of all ``leaves`` together.

    ``method`` ``"l1"`` drops the smallest ``|leaf|`` (compared in ``dtype``); ``"random"`` the
    smallest hash-stream keys of one seed drawn from ``generator``; ``"scores"`` the smallest (or
    ``largest``) entries of the leaves themselves, which must be non-negative. Ties go to the
    lowest global index. ``keeps`` are bool masks laid out like their leaves (or None). The result is laid out
    like the leaves (DTensors with their mesh and placements). ``names`` name the leaves in errors
    and in the check that every rank made the same call (default: ``leaf 0``, ``leaf 1``, ...).

    Raises:
      ValueError: an int ``amount`` above the survivors (torch's message), ranks whose calls differ
        (see :func:`agreed_alive`), or ranks whose seeds differ.
    """
    if _dtensor.outside_mesh(leaves):
        return [_dtensor.empty_mask_like(t) for t in leaves]
    shards = _Shards(leaves, keeps)
    names = [f"leaf {i}" for i in range(len(leaves))] if names is None else list(names)
    alive = agreed_alive(shards, call_fingerprint(names, leaves, keeps, amount, method), amount)
    amount, k = _amount.drop_count(amount, alive, "parameters")
    spread: dict[str, Any] = dict(
        reduce=shards.reduce, counted=shards.counted, index_fn=shards.index, index_total=shards.total
    )
    if method == "l1":
        local = _radix.radix_select_keep(
            shards.locals, shards.keeps, k, key_fn=lambda piece: piece.abs().to(dtype), chunk=chunk, **spread
        )
    elif method == "scores":
        local = _radix.radix_select_keep(shards.locals, shards.keeps, k, largest=largest, chunk=chunk, **spread)
    else:
        seed = draw_seed(generator, leaves)
        local = _radix.radix_select_keep(
            shards.locals,
            shards.keeps,
            k,
            key_fn=lambda index: hash_keys(seed, index),
            chunk=chunk,
            key_from_index=True,
            **spread,
        )
    return shards.wrap(local)


# ----------------------------------------------------------------------------------------------
# Per channel: one score per channel crosses the wire, then the single-process kernel runs everywhere.


def _channel_block(t: torch.Tensor, dim: int):
    """``(first, count)``: the global channels along ``dim`` that this rank's shard of ``t`` holds."""
    offset, shape = _dtensor.offset_and_shape(t)
    return offset[dim], shape[dim]


def _to_channels(local_values: torch.Tensor, first: int, counted: bool, channels: int, reduce) -> torch.Tensor:
    """A channels-sized vector of every rank's per-channel partial ``local_values`` (channels ``first ..``), summed.

    Travels as int64 (counts): a rank adds what its shard holds of each channel (replicas send zeros),
    so the sum is the exact total over the full tensor.
    """
    out = torch.zeros(channels, dtype=torch.int64, device=local_values.device)
    if counted:
        out[first : first + local_values.numel()] = local_values.to(torch.int64)
    return out if reduce is None else reduce(out)


def channels_kept(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Which channels along ``dim`` keep an entry anywhere (a plain channels-sized bool vector, on every rank)."""
    if _dtensor.is_dtensor(mask):
        _dtensor.check_placements("mask", mask)
    if _dtensor.outside_mesh([mask]):  # holds none of the channels' entries
        return torch.zeros(mask.shape[dim], dtype=torch.bool, device=_dtensor.local(mask).device)
    keep = _dtensor.local(mask) != 0
    others = [d for d in range(keep.dim()) if d != dim]
    counts = keep.sum(dim=others) if others else keep.to(torch.int64)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([mask]))
    first = _channel_block(mask, dim)[0]
    return _to_channels(counts, first, _dtensor.counts_here(mask), mask.shape[dim], reduce) > 0


def spread_channels(
    channel_keep: torch.Tensor, like: torch.Tensor, dim: int, keep: torch.Tensor | None
) -> torch.Tensor:
    """A mask laid out like ``like``: ``channel_keep`` spread along ``dim`` of its shard, and ``keep``."""
    if _dtensor.outside_mesh([like]):
        return _dtensor.empty_mask_like(like)
    first, count = _channel_block(like, dim)
    shape = tuple(_dtensor.local(like).shape)
    view = [1] * len(shape)
    view[dim] = count
    local = channel_keep[first : first + count].view(view).expand(shape).clone()
    if keep is not None:
        local &= _dtensor.local(keep)
    return _dtensor.like_param(local, like)


def _norm_order(n) -> float:
    """``n`` as the vector-norm order the one-process kernel uses for one channel (``'fro'`` is 2).

    Raises:
      ValueError: ``'nuc'`` (a matrix norm of each channel: not a sum over entries, so not
        computable from partial sums of shards).
    """
    if n == "nuc":
        raise ValueError(
            "n='nuc' (the nuclear norm of each channel) cannot be computed from shards; "
            "DTensor scores take a vector norm order (1, 2, inf, -inf, 0, 'fro', any float p)"
        )
    return 2.0 if n == "fro" else float(n)


def channel_norms(scores: torch.Tensor, n, dim: int) -> torch.Tensor:
    """The L``n`` norm of every channel along ``dim``, computed in float64 from per-shard partial sums.

    Each rank reduces its own local shard (any placement, nothing is moved) to one float64 partial
    per channel: the sum of ``|x|**p`` (finite ``p``; ``p=0`` counts nonzeros; ``'fro'`` is 2), or
    the max (``inf``) / min (``-inf``) of ``|x|``. One channels-sized all-reduce (8 bytes a channel;
    replicas count once) combines them, the root (``1/p`` power) is taken in float64 and the result
    cast to the dtype the one-process kernel returns. So the norms do not depend on the world size
    or the placements (up to float64 rounding, far below the scores dtype's): a true tie (two
    channels holding the same values in another order) stays a tie, broken by the kernel's tie
    rule. torch's own float32 norms (:func:`funcprune.methods.channel_norm`, what one-process
    ``ln_structured`` uses) can split such a tie by summation order, so the two agree except
    where two channel norms differ by less than the scores dtype's summation error. A plain tensor
    takes the same float64 path (one process, no collective). NaN and inf propagate as in torch.

    Raises:
      ValueError: an ``n`` that does not give one norm per channel, or ``'nuc'``;
      TypeError/RuntimeError: as the one-process kernel raises for ``n`` or the dtype.

    Example:
      >>> channel_norms(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), 2, 0)
      tensor([5., 1.])
    """
    if _dtensor.is_dtensor(scores):
        _dtensor.check_placements("scores", scores)
    # n and the dtype checked as the one-process kernel checks them, on one entry per dim
    local = _dtensor.local(scores).detach()
    probe = channel_norm(torch.zeros((2,) * scores.dim(), dtype=scores.dtype, device=local.device), n, dim)
    if tuple(probe.shape) != (2,):
        raise ValueError(
            f"n={n!r} gives norms of shape {tuple(probe.shape)} for a tensor of shape "
            f"{tuple(scores.shape)}, not one per channel along dim {dim}"
        )
    p = _norm_order(n)
    if _dtensor.outside_mesh([scores]):  # no entries here, no group to join: the selection returns an empty shard
        return torch.zeros(scores.shape[dim], dtype=probe.dtype, device=local.device)
    first, count = _channel_block(scores, dim)
    counted = _dtensor.counts_here(scores)
    channels = scores.shape[dim]
    others = [d for d in range(local.dim()) if d != dim]
    x = local.to(torch.float64).abs()
    device = local.device
    if p in (math.inf, -math.inf):  # max / min of |x|, exact: compared as int64 bit patterns (NaN wins)
        top = p > 0
        bits = torch.where(x.isnan(), torch.full_like(x, math.nan), x).view(torch.int64)
        if not top:
            bits = torch.where(x.isnan(), torch.full_like(bits, -1), bits)  # NaN below every pattern: min picks it
        fill = 0 if top else torch.iinfo(torch.int64).max
        part = torch.full((channels,), fill, dtype=torch.int64, device=device)
        if counted and bits.numel():
            part[first : first + count] = bits.amax(dim=others) if top else bits.amin(dim=others)
        reduce = _dtensor.mesh_sum(_dtensor.mesh_of([scores]), "max" if top else "min")
        part = part if reduce is None else reduce(part)
        if not top:
            part = torch.where(part == -1, torch.full_like(part, 0x7FF8000000000000), part)
        norm = part.view(torch.float64)
    else:
        if p == 0:
            terms = (x != 0).to(torch.float64)
        elif p == 1:
            terms = x
        elif p == 2:
            terms = x * x
        else:
            terms = x.pow(p)
        part = torch.zeros(channels, dtype=torch.float64, device=device)
        if counted and terms.numel():
            part[first : first + count] = terms.sum(dim=others) if others else terms
        reduce = _dtensor.mesh_sum(_dtensor.mesh_of([scores]))
        part = part if reduce is None else reduce(part)
        norm = part if p in (0, 1) else part.sqrt() if p == 2 else part.pow(1.0 / p)
    return norm.to(probe.dtype)


def random_channel_keys(seed: int, channels: int, device) -> torch.Tensor:
    """Hash-stream keys of the channels (indexed 0 .. channels-1)."""
    return hash_keys(seed, torch.arange(channels, dtype=torch.int64, device=device))


def kept_count(mask: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Nonzero entries of a (DTensor) mask over the full tensor, int64 (per leading index if ``per_row``).

    Raises:
      ValueError: this rank is not in the mask's mesh (it holds none of the entries and cannot count them).
    """
    if _dtensor.is_dtensor(mask):
        _dtensor.check_placements("mask", mask)
    if _dtensor.is_dtensor(mask) and _dtensor.outside_mesh([mask]):  # only a DTensor is ever outside
        raise ValueError(
            f"rank {torch.distributed.get_rank()} is not in the mask's device mesh {mask.device_mesh}: "
            f"it holds none of the mask's entries and cannot count them; count on the mesh's ranks"
        )
    local = _dtensor.local(mask)
    counts = (local != 0).flatten(1).sum(1) if per_row else (local != 0).sum().reshape(1)
    if not _dtensor.counts_here(mask):
        counts = torch.zeros_like(counts)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([mask]))
    counts = counts if reduce is None else reduce(counts)
    return counts if per_row else counts[0]
