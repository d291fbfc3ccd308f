"""Per-channel statistics over tensors that may be DTensor shards: one value per channel crosses the wire.

Structured selections (L``n``, random channels) need one score per channel: every rank reduces
its own local shard (any placement, no shard moves) to channels-sized partials (sums, or max/min,
of ``|x|**p``; kept-entry counts), one ``all_reduce`` of that vector combines them (replicas count
once), and every rank then runs the single-process kernel on the same vector. A plain tensor is a
one-process shard of itself: the same code, no collective. Eager only.
"""

from __future__ import annotations

import math

import torch

from . import _dtensor
from ._norms import channel_norm

__all__ = ["channels_kept", "spread_channels", "channel_norms", "kept_count"]


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
