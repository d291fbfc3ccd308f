"""Gather-free selections over tensors that may be DTensor shards: global, per-tensor and per-channel.

One code path serves DTensors and plain tensors (a plain tensor is a one-process "shard" of
itself), so a one-process run of the hash stream reproduces a distributed mask bit for bit.

* Unstructured (L1, random): the radix cut of :mod:`funcprune._radix` over the local shards, each
  pass's 64K-bin histogram summed across the mesh (``all_reduce``); ties at the cut go to the lowest
  global flat index (leaf order, then row-major in the full tensor), by a second radix selection
  over the tied entries' global indices. Replicas (``Replicate`` mesh dims) count once.
* Structured (L``n``, random): one score per channel crosses the wire (an ``all_reduce`` of a
  channels-sized vector, norms computed where a channel is whole), then every rank runs the
  single-process kernel on the same vector.
* Random keys: a counter-based hash of ``(seed, global flat index)`` (the *hash stream*): the same
  mask for the same seed whatever the world size and placement, no full-size draw anywhere. It is
  not torch's stream (``torch.rand``), so it does not reproduce torch's random masks.

Eager only: collectives, and Python ints read from count tensors.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from . import _amount, _dtensor, _radix, _select
from ._amount import Amount

_M32 = 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# The hash stream: int64 arithmetic whose intermediates stay below 2**63 (no wrap-around anywhere).

def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``(h * c) mod 2**32`` for 32-bit ``h`` and ``c``, in int64 without overflow (16-bit halves of ``c``)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit finalizer (the "lowbias32" xor-shift-multiply rounds)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def hash_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    """Pseudo-random non-negative int64 keys (below 2**62) of ``(seed, index)``, for int64 ``index >= 0``.

    A counter-based stream: entry ``i`` gets the same key wherever it is computed, so any sharding
    of the indices gives the same keys.

    Example:
      >>> a = hash_keys(7, torch.arange(4))
      >>> bool((a == hash_keys(7, torch.arange(4))).all()), bool((a >= 0).all())
      (True, True)
    """
    s0, s1 = seed & _M32, (seed >> 32) & _M32
    lo, hi = index & _M32, index >> 32
    a = _mix32(lo ^ s0)
    b = _mix32(hi ^ s1 ^ a)
    a = _mix32(a ^ _mul32(b, 0x9E3779B9) ^ s1)
    return ((a >> 1) << 31) | (b >> 1)


def draw_seed(generator: Optional[torch.Generator], tensors: Sequence[torch.Tensor]) -> int:
    """One 63-bit seed from ``generator`` (or the global RNG); for DTensors, checked equal on every rank.

    Raises:
      ValueError: ranks drew different seeds (their RNG states differ: seed them alike).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2 ** 63 - 1, (), generator=generator, device=device))
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of(tensors), "max")
    if reduce is not None:  # max(seed) == -max(-seed) iff every rank drew the same seed
        both = reduce(torch.tensor([seed, -seed], dtype=torch.int64, device=_dtensor.local(tensors[0]).device))
        if int(both[0]) != -int(both[1]):
            raise ValueError(f"ranks drew different random seeds ({-int(both[1])} .. {int(both[0])}): seed every "
                             f"rank's RNG alike (torch.manual_seed) or pass a generator seeded alike")
    return seed


# ----------------------------------------------------------------------------------------------
# Leaves as local shards.

class _Shards:
    """Local views of some leaves (DTensors on one mesh, or plain tensors) and their global bookkeeping."""

    def __init__(self, leaves: Sequence[torch.Tensor], keeps: Sequence[Optional[torch.Tensor]]) -> None:
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

    def wrap(self, local_masks: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Local masks as masks laid out like the leaves."""
        return [_dtensor.like_param(m, t) for m, t in zip(local_masks, self.leaves)]


def select_global(leaves: Sequence[torch.Tensor], keeps: Sequence[Optional[torch.Tensor]], amount: Amount, *,
                  method: str, dtype: torch.dtype, generator: Optional[torch.Generator] = None,
                  chunk: int = _radix.DEFAULT_CHUNK) -> List[torch.Tensor]:
    """Keep masks after pruning ``amount`` of the surviving entries of all ``leaves`` together.

    ``method`` ``"l1"`` drops the smallest ``|leaf|`` (compared in ``dtype``); ``"random"`` the
    smallest hash-stream keys of one seed drawn from ``generator``. Ties go to the lowest global
    index. ``keeps`` are bool masks laid out like their leaves (or None). The result is laid out
    like the leaves (DTensors with their mesh and placements).

    Raises:
      ValueError: an int ``amount`` above the survivors (torch's message), or ranks whose seeds differ.
    """
    shards = _Shards(leaves, keeps)
    amount, k = _amount.drop_count(amount, shards.alive(), "parameters")
    spread = dict(reduce=shards.reduce, counted=shards.counted, index_fn=shards.index)
    if method == "l1":
        local = _radix.radix_select_keep(shards.locals, shards.keeps, k, key_fn=lambda piece: piece.abs().to(dtype),
                                         chunk=chunk, **spread)
    else:
        seed = draw_seed(generator, leaves)
        local = _radix.radix_select_keep(shards.locals, shards.keeps, k, key_fn=lambda index: hash_keys(seed, index),
                                         chunk=chunk, key_from_index=True, **spread)
    return shards.wrap(local)


# ----------------------------------------------------------------------------------------------
# Per channel: one score per channel crosses the wire, then the single-process kernel runs everywhere.

def _channel_block(t: torch.Tensor, dim: int):
    """``(first, count)``: the global channels along ``dim`` that this rank's shard of ``t`` holds."""
    offset, shape = _dtensor.offset_and_shape(t)
    return offset[dim], shape[dim]


def _to_channels(local_values: torch.Tensor, first: int, counted: bool, channels: int, reduce) -> torch.Tensor:
    """A channels-sized vector of every rank's per-channel ``local_values`` (channels ``first ..``), summed.

    Travels as float64 (or int64): each channel has one contributor (replicas send zeros), so the
    sum is that value exactly, NaN and inf included.
    """
    wire = torch.float64 if local_values.is_floating_point() else torch.int64
    out = torch.zeros(channels, dtype=wire, device=local_values.device)
    if counted:
        out[first:first + local_values.numel()] = local_values.to(wire)
    return out if reduce is None else reduce(out)


def channels_kept(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Which channels along ``dim`` keep an entry anywhere (a plain channels-sized bool vector, on every rank)."""
    keep = _dtensor.local(mask) != 0
    others = [d for d in range(keep.dim()) if d != dim]
    counts = keep.sum(dim=others) if others else keep.to(torch.int64)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([mask]))
    first = _channel_block(mask, dim)[0]
    return _to_channels(counts, first, _dtensor.counts_here(mask), mask.shape[dim], reduce) > 0


def spread_channels(channel_keep: torch.Tensor, like: torch.Tensor, dim: int,
                    keep: Optional[torch.Tensor]) -> torch.Tensor:
    """A mask laid out like ``like``: ``channel_keep`` (channels-sized) spread along ``dim`` of its shard, & ``keep``."""
    first, count = _channel_block(like, dim)
    shape = tuple(_dtensor.local(like).shape)
    view = [1] * len(shape)
    view[dim] = count
    local = channel_keep[first:first + count].view(view).expand(shape).clone()
    if keep is not None:
        local &= _dtensor.local(keep)
    return _dtensor.like_param(local, like)


def _chunks(size: int, parts: int) -> List[int]:
    """torch.chunk's sizes of ``size`` entries over ``parts`` ranks (trailing ranks may get 0)."""
    step = -(-size // parts) if parts else 0
    return [max(0, min(step, size - j * step)) for j in range(parts)]


def _whole_channels(scores: torch.Tensor, dim: int):
    """``(local, first, counted)``: a block of whole channels along ``dim`` held here, its first channel.

    A DTensor split along another dim ``d`` by ONE mesh dim (later mesh dims replicating) is
    resharded by one ``all_to_all_single`` in that mesh dim's group, bytes of a shard each way; any
    other layout goes through DTensor's ``redistribute`` (which on gloo falls back to all-gather).
    """
    local = _dtensor.local(scores).detach()
    if not _dtensor.is_dtensor(scores):
        return local, 0, True
    from torch.distributed.tensor import Replicate, Shard
    other = [m for m, p in enumerate(scores.placements) if isinstance(p, Shard) and p.dim % scores.dim() != dim]
    if not other:
        return local, _channel_block(scores, dim)[0], _dtensor.counts_here(scores)
    m = other[0]
    if len(other) > 1 or not all(isinstance(p, Replicate) for p in scores.placements[m + 1:]):
        placements = [Shard(dim) if isinstance(p, Shard) else p for p in scores.placements]
        whole = _dtensor.redistribute(scores, placements)
        return _dtensor.local(whole).detach(), _channel_block(whole, dim)[0], _dtensor.counts_here(whole)
    mesh, d = scores.device_mesh, scores.placements[m].dim % scores.dim()
    width, me = mesh.size(m), mesh.get_local_rank(m)
    sends = _chunks(local.shape[dim], width)  # my block of channels, split over the group
    pieces = _chunks(scores.shape[d], width)  # d is split by mesh dim m alone: its global size
    starts = [sum(sends[:j]) for j in range(width)]
    payload = [local.narrow(dim, a, n).contiguous().view(-1).view(torch.uint8) for a, n in zip(starts, sends)]
    shape = list(local.shape)
    shape[dim] = sends[me]
    incoming = []
    for size in pieces:
        shape[d] = size
        incoming.append(math.prod(shape) * local.element_size())
    out = torch.empty(sum(incoming), dtype=torch.uint8, device=local.device)
    torch.distributed.all_to_all_single(out, torch.cat(payload), incoming, [p.numel() for p in payload],
                                        group=mesh.get_group(m))
    blocks = []
    for piece, size in zip(out.split(incoming), pieces):
        shape[d] = size
        blocks.append(piece.view(local.dtype).view(shape))
    first = _channel_block(scores, dim)[0] + starts[me]
    return torch.cat(blocks, dim=d), first, _dtensor.counts_here(scores)


def channel_norms(scores: torch.Tensor, n, dim: int) -> torch.Tensor:
    """The L``n`` norm of every channel along ``dim`` as the one-process kernel computes it, on every rank.

    Computed where each channel is whole (a shard-sized reshard when ``scores`` is split along
    another dim), so the values are the single-process ones; a channels-sized vector crosses the wire.

    Raises:
      ValueError: an ``n`` that does not give one norm per channel.
    """
    local, first, counted = _whole_channels(scores, dim)
    norm = _select.channel_norm(local, n, dim)
    if tuple(norm.shape) != (local.shape[dim],):
        raise ValueError(f"n={n!r} gives norms of shape {tuple(norm.shape)} for a tensor of shape "
                         f"{tuple(scores.shape)}, not one per channel along dim {dim}")
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([scores]))
    return _to_channels(norm, first, counted, scores.shape[dim], reduce).to(norm.dtype)


def select_channels(scores: torch.Tensor, amount: Amount, dim: int, key, keep: Optional[torch.Tensor], *,
                    select_kept: bool = False, lazy: bool = True) -> torch.Tensor:
    """A mask laid out like ``scores`` pruning ``amount`` of its alive channels along ``dim`` by ``key``.

    ``key`` is the channels-sized score vector (or a callable returning it), the same on every
    rank; the selection is the single-process kernel's (:func:`funcprune._select.prune_units` over
    the channels), so the channel choice, ties included, is the one-process choice for that vector.
    """
    channels = scores.shape[dim]
    alive = None if keep is None else channels_kept(keep, dim)
    device = _dtensor.local(scores).device
    like = torch.empty((channels, 1), dtype=torch.bool, device=device)
    unit_keep = _select.prune_units(like, _select.slices(like.shape, 0), amount, key,
                                    mask=None if alive is None else alive.view(channels, 1),
                                    select_kept=select_kept, lazy=lazy, what="parameters")
    return spread_channels(unit_keep.view(channels), scores, dim, keep)


def random_channel_keys(seed: int, channels: int, device) -> torch.Tensor:
    """Hash-stream keys of the channels (indexed 0 .. channels-1)."""
    return hash_keys(seed, torch.arange(channels, dtype=torch.int64, device=device))


def kept_count(mask: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Nonzero entries of a (DTensor) mask over the full tensor, int64 (per leading index if ``per_row``)."""
    local = _dtensor.local(mask)
    counts = (local != 0).flatten(1).sum(1) if per_row else (local != 0).sum().reshape(1)
    if not _dtensor.counts_here(mask):
        counts = torch.zeros_like(counts)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([mask]))
    counts = counts if reduce is None else reduce(counts)
    return counts if per_row else counts[0]
