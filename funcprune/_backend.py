"""The backend seam: what a selection does differently for plain tensors and DTensor shards.

A method computes scores and names a granularity; it never asks whether its tensor is sharded.
The kernel (:mod:`funcprune.select`) and the tree-level helpers ask this module, which has two
implementations of one small interface, chosen by the tensor being pruned:

* *local* (plain tensors): counts are sums, masks are plain tensors, random draws are torch's
  stream by default;
* *sharded* (DTensors, ``Shard``/``Replicate`` on a 1-D or 2-D mesh): every rank works on its
  local shard, counts and per-channel statistics are summed across the mesh (``all_reduce`` of
  small tensors, never a shard), the global cut is the radix selection of :mod:`funcprune._sharded`
  and masks are wrapped back with the param's mesh and placements; random draws take the hash
  stream (a counter over global indices), the only one that is the same whatever the sharding.

The interface: :func:`keep` (a mask laid out like its tensor), :func:`fresh` (nothing pruned),
:func:`stream` (which random stream), :func:`channel_norms`, :func:`kept_count`,
:func:`channels_kept`, :func:`spread_channels`, :func:`stacked`/:func:`unstacked` and the
kernel's own :func:`global_cut`, :func:`split_dims`, :func:`shard_of`, :func:`plain` and :func:`wrap`;
for methods that work row by row on a layer's own rows (one-shot pruning): :func:`local`,
:func:`total`, :func:`check_rows_whole` and :func:`rows_like` (with :func:`shard_of`, :func:`wrap` and
:func:`global_cut`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast, overload

import torch

from . import _dtensor, _hashstream, _radix, _sharded, _sharded_channels
from ._amount import Amount, is_concrete
from ._norms import channel_norm

if TYPE_CHECKING:  # torch.distributed.tensor is imported only where a DTensor already exists (see _dtensor)
    from torch.distributed.tensor import DTensor, Shard

__all__ = [
    "as_keep",
    "sharded",
    "any_sharded",
    "keep",
    "fresh",
    "stream",
    "HashStream",
    "hash_channel_keys",
    "channel_norms",
    "kept_count",
    "channels_kept",
    "spread_channels",
    "stacked",
    "unstacked",
    "global_cut",
    "global_select",
    "split_dims",
    "shard_of",
    "local_block",
    "plain",
    "wrap",
    "local",
    "total",
    "check_rows_whole",
    "rows_like",
]

_STREAMS = (None, "torch", "hash")


@overload
def as_keep(scores: torch.Tensor, mask: torch.Tensor, what: str = ...) -> torch.Tensor: ...
@overload
def as_keep(scores: torch.Tensor, mask: None, what: str = ...) -> None: ...
@overload
def as_keep(scores: torch.Tensor, mask: torch.Tensor | None, what: str = ...) -> torch.Tensor | None: ...


def as_keep(scores: torch.Tensor, mask: torch.Tensor | None, what: str = "mask") -> torch.Tensor | None:
    """The existing mask as bool on the scores' device (None stays None), after a shape check.

    Args:
      scores: the tensor the mask belongs to.
      mask: a bool, integer or float mask (non-zero = kept), or None.
      what: the mask's name in error messages.

    Returns:
      ``mask`` as a bool tensor on ``scores``' device (``mask`` itself when it already is one), or None.

    Raises:
      TypeError: ``mask`` not a tensor. ValueError: its shape is not ``scores``' shape.

    Example:
      >>> as_keep(torch.zeros(3), torch.tensor([1.0, 0.0, 2.0]))
      tensor([ True, False,  True])
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(mask).__name__}")
    if mask.shape != scores.shape:
        raise ValueError(f"{what} has shape {tuple(mask.shape)} but the scores have shape {tuple(scores.shape)}")
    mask = mask.to(device=scores.device)
    return mask if mask.dtype == torch.bool else mask != 0


def sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` takes the sharded backend (a DTensor)."""
    return _dtensor.is_dtensor(t)


def any_sharded(leaves: Sequence[torch.Tensor]) -> bool:
    """Whether any of ``leaves`` takes the sharded backend (then nothing is vmapped over them)."""
    return any(_dtensor.is_dtensor(t) for t in leaves)


@overload
def keep(like: torch.Tensor, mask: torch.Tensor, what: str = ...) -> torch.Tensor: ...
@overload
def keep(like: torch.Tensor, mask: None, what: str = ...) -> None: ...
@overload
def keep(like: torch.Tensor, mask: torch.Tensor | None, what: str = ...) -> torch.Tensor | None: ...


def keep(like: torch.Tensor, mask: torch.Tensor | None, what: str = "mask") -> torch.Tensor | None:
    """``mask`` as a bool keep mask laid out like ``like`` (None stays None), after the layout checks.

    Raises:
      ValueError/TypeError: as :func:`as_keep`; for a DTensor ``like`` also an unsupported
        placement (naming ``scores``) or a mask sharded unlike it.
    """
    if not _dtensor.is_dtensor(like):
        return as_keep(like, mask, what)
    _dtensor.check_placements("scores", like)
    kept = as_keep(like, mask, what)
    return None if kept is None else _dtensor.aligned(kept, like, what)


def fresh(like: torch.Tensor, kept: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Nothing pruned: ``kept`` (all ``True`` for None) as a new mask, never the caller's ``mask`` itself."""
    if _dtensor.is_dtensor(like):
        here = _dtensor.local(like)
        return _dtensor.like_param(
            torch.ones(here.shape, dtype=torch.bool, device=here.device)
            if kept is None
            else _dtensor.local(kept).clone(),
            like,
        )
    if kept is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return kept.clone() if kept is mask else kept


def stream(name: str | None, like: torch.Tensor) -> str:
    """``"torch"`` or ``"hash"``: which random stream draws for ``like`` (DTensors only have the hash stream).

    Raises:
      ValueError: a name other than None/``"torch"``/``"hash"``, or ``"torch"`` for a DTensor.
    """
    if name not in _STREAMS:
        raise ValueError(f"stream must be None, 'torch' or 'hash', got {name!r}")
    if _dtensor.is_dtensor(like):
        if name == "torch":
            raise ValueError("stream='torch' needs full-size draws; DTensor scores take stream='hash'")
        return "hash"
    return name or "torch"


class HashStream:
    """Scores from the hash stream: one seed drawn from ``generator`` when the kernel needs it.

    The kernel reads a unit's key as the hash of ``(seed, the unit's global flat index)``, so the
    keys do not depend on the sharding. Pass one as ``scores`` to :func:`funcprune.select.prune_units`.
    """

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator
        self._seed: int | None = None

    def seed(self, like: torch.Tensor) -> int:
        """The seed, drawn once (checked equal on every rank for a DTensor ``like``)."""
        if self._seed is None:
            self._seed = _hashstream.draw_seed(self.generator, [like])
        return self._seed


def hash_channel_keys(seed: int, channels: int, device) -> torch.Tensor:
    """Hash-stream keys of channels ``0 .. channels-1`` (plain, the same on every rank)."""
    return _hashstream.random_channel_keys(seed, channels, device)


def channel_norms(scores: torch.Tensor, n, dim: int, channels: int) -> torch.Tensor:
    """The L``n`` norm of every channel along ``dim``: torch's (local) or float64 partial sums (sharded).

    Raises:
      ValueError: an ``n`` that does not give one norm per channel (and ``'nuc'`` for DTensors).
    """
    if _dtensor.is_dtensor(scores):
        return _sharded_channels.channel_norms(scores, n, dim)  # one float64 per channel crosses the wire
    norm = channel_norm(scores.detach(), n, dim)
    if tuple(norm.shape) != (channels,):  # torch 2.14 reads 'nuc' over other than 2 dims so
        raise ValueError(
            f"n={n!r} gives norms of shape {tuple(norm.shape)} for a tensor of shape "
            f"{tuple(scores.shape)}, not one per channel along dim {dim}"
        )
    return norm


def kept_count(mask: torch.Tensor) -> int | torch.Tensor:
    """Kept entries of ``mask`` over the full tensor (summed across the mesh for a DTensor)."""
    if _dtensor.is_dtensor(mask):
        return int(_sharded_channels.kept_count(mask))
    total = mask.sum()
    return int(total) if is_concrete(mask) else total


def channels_kept(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Which channels along ``dim`` (non-negative) keep an entry: a 1-D bool tensor, plain on every rank.

    For a DTensor one channels-sized count vector crosses the wire; a plain mask is reduced
    locally (under ``vmap`` too).
    """
    if _dtensor.is_dtensor(mask):
        return _sharded_channels.channels_kept(mask, dim)
    others = [d for d in range(mask.dim()) if d != dim]
    kept = mask != 0
    return kept.any(dim=others) if others else kept


def spread_channels(
    channel_keep: torch.Tensor, like: torch.Tensor, dim: int, kept: torch.Tensor | None
) -> torch.Tensor:
    """A new mask laid out like ``like``: the plain channels-sized ``channel_keep`` spread along ``dim``, & ``kept``."""
    if _dtensor.is_dtensor(like):
        return _sharded_channels.spread_channels(channel_keep, like, dim, kept)
    view = [1] * like.dim()
    view[dim] = -1
    spread = channel_keep.to(like.device).view(view).expand(like.shape)
    return spread.clone() if kept is None else spread & kept


def stacked(masks: list[torch.Tensor]) -> torch.Tensor:
    """K masks of one layout stacked along a new dim 0 (locally for DTensors: shard dims shift by one)."""
    # masks of one layout: all are DTensors when the first is
    return _dtensor.stacked(cast("list[DTensor]", masks)) if _dtensor.is_dtensor(masks[0]) else torch.stack(masks)


def unstacked(t: torch.Tensor, k: int) -> torch.Tensor:
    """Entry ``k`` along dim 0 of a stack (locally for DTensors)."""
    return _dtensor.unstacked(t, k) if _dtensor.is_dtensor(t) else t[k]


# ----------------------------------------------------------------------------------------------
# The kernel's half: the global cut (one tensor: global_cut; many: global_select), local shards, wrapping.


def global_cut(
    like: torch.Tensor, kept: torch.Tensor | None, amount: Amount, scores: torch.Tensor | HashStream, *, largest: bool
) -> torch.Tensor:
    """A keep mask laid out like ``like`` pruning ``amount`` of its survivors by a radix cut, ties to the lowest index.

    The counts are summed across the mesh, the cut's histograms too (:func:`funcprune._sharded.select_global`);
    the same code runs in one process for a plain tensor. ``scores``: non-negative entry scores
    laid out like ``like`` (or ``Replicate()`` where it is sharded), or a :class:`HashStream`.

    Raises:
      ValueError: scores with a negative entry (on any rank: every rank raises).
    """
    if isinstance(scores, HashStream):
        return _sharded.select_global(
            [like], [kept], amount, method="random", dtype=like.dtype, generator=scores.generator
        )[0]
    if _dtensor.outside_mesh([like]):  # no entries here and no group to join: DTensor's empty shard
        return _dtensor.empty_mask_like(like)
    if _dtensor.is_dtensor(like):
        scores = _dtensor.aligned(scores, like, "scores")
    elif _dtensor.is_dtensor(scores):
        raise ValueError("the scores are a DTensor but the param is a plain tensor; give both as DTensors (or neither)")
    here = _dtensor.local(scores).detach()
    negative = (torch.signbit(here) if here.is_floating_point() else here < 0).any().reshape(1).to(torch.int64)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([like]), "max")
    if int((negative if reduce is None else reduce(negative))[0]):
        raise ValueError(
            "a selection over DTensor shards ranks non-negative scores (radix keys): got a negative "
            "score; pass magnitudes (e.g. scores.abs())"
        )
    return _sharded.select_global(
        [scores.detach()], [kept], amount, method="scores", dtype=scores.dtype, largest=largest
    )[0]


def global_select(
    leaves: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor | None],
    amount: Amount,
    *,
    method: str,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
    chunk: int = _radix.DEFAULT_CHUNK,
    names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """Keep masks after pruning ``amount`` of the survivors of all ``leaves`` together: the global cut.

    ``method``: ``"l1"`` (smallest ``|leaf|`` in ``dtype``) or ``"random"`` (the hash stream of one
    seed from ``generator``). Local (plain tensors): radix passes over the leaves, ties to the
    lowest index in leaf order. Sharded (DTensors of one mesh): the same passes over the local
    shards with every histogram summed across the mesh, ties by global index, masks laid out like
    the leaves. The same masks either way. Eager only.

    Raises:
      ValueError: an int ``amount`` above the survivors, or ranks whose calls or seeds differ.
    """
    return _sharded.select_global(
        leaves, keeps, amount, method=method, dtype=dtype, generator=generator, chunk=chunk, names=names
    )


def split_dims(like: torch.Tensor) -> list[int]:
    """The dims of ``like`` split across ranks (none for a plain tensor)."""
    if not _dtensor.is_dtensor(like):
        return []
    return sorted({cast("Shard", p).dim % like.dim() for p in like.placements if p.is_shard()})


@overload
def shard_of(t: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor: ...
@overload
def shard_of(t: None, like: torch.Tensor, what: str) -> None: ...
@overload
def shard_of(t: torch.Tensor | None, like: torch.Tensor, what: str) -> torch.Tensor | None: ...


def shard_of(t: torch.Tensor | None, like: torch.Tensor, what: str) -> torch.Tensor | None:
    """This rank's shard of ``t`` laid out like ``like`` (``t`` itself for plain tensors)."""
    if t is None or not (_dtensor.is_dtensor(t) or _dtensor.is_dtensor(like)):
        return t
    return _dtensor.local(_dtensor.aligned(t, like, what))


def local_block(like: torch.Tensor):
    """``(global offset, local shape)`` of this rank's shard of ``like`` (zeros and the shape for a plain one)."""
    return _dtensor.offset_and_shape(like)


def plain(units: torch.Tensor) -> torch.Tensor:
    """Per-unit scores as a plain tensor, the same on every rank (a DTensor's few units gathered)."""
    return units.full_tensor() if _dtensor.is_dtensor(units) else units


def wrap(local_mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A local mask as a mask laid out like ``like``."""
    return _dtensor.like_param(local_mask, like)


# ----------------------------------------------------------------------------------------------
# Row-wise methods: each process works on the rows it holds (a plain tensor: all of them).


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's entries of ``t``: a DTensor's local shard, a plain tensor itself."""
    return _dtensor.local(t)


def total(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value``, computed from this process's shard of ``like``, summed over the shards (replicas counted once).

    A small tensor (a count, a sum), never the entries: one ``all_reduce`` per mesh dim for a
    DTensor ``like``; ``value`` itself for a plain one.
    """
    if not _dtensor.is_dtensor(like):
        return value
    summed = value.clone() if _dtensor.counts_here(like) else torch.zeros_like(value)
    reduce = _dtensor.mesh_sum(_dtensor.mesh_of([like]))
    return summed if reduce is None else reduce(summed)


def check_rows_whole(weight: torch.Tensor, what: str = "weight") -> None:
    """Raise unless every process holds whole rows of ``weight`` (``Shard(0)``, as FSDP2 shards, or ``Replicate``).

    Raises:
      ValueError: a DTensor sharded along another dim or laid out otherwise
        (:func:`funcprune._dtensor.check_placements`), naming ``what``.
    """
    if not _dtensor.is_dtensor(weight):
        return
    _dtensor.check_placements(what, weight)
    for placement in weight.placements:
        if placement.is_shard() and cast("Shard", placement).dim % max(weight.dim(), 1) != 0:
            raise ValueError(
                f"{what}: sharded along dim {cast('Shard', placement).dim} ({tuple(weight.placements)}); a "
                f"row-wise method needs whole rows on each rank (Shard(0), as FSDP2 shards, or Replicate)"
            )


def rows_like(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's rows ``rows`` (``(rows held here, c)``) as the ``(like.shape[0], c)`` tensor they belong to.

    For a row-sharded DTensor ``like`` the result is a DTensor with its mesh and placements (so a
    :func:`global_cut` on it spans every rank's rows); for a plain ``like``, ``rows`` itself.
    """
    return _dtensor.like_param(rows, like, (like.shape[0], rows.shape[1]))
