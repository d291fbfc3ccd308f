"""DTensor plumbing for gather-free pruning: detect, local views, global indices, sums, wrapping.

A DTensor leaf is pruned through its local shard only. This module holds what every distributed
selection needs: which leaves are DTensors (and that their placements are supported), where the
local shard sits in the full tensor (its global offset and the global row-major flat index of each
local entry, int64 and exact past 2**31), a sum of small count tensors across the mesh in which
every entry counts once (replicas of a ``Replicate`` mesh dim contribute only at mesh coordinate
0), and wrapping a local bool mask back as a DTensor laid out like its param. Nothing here gathers
a tensor: the only collectives are ``all_reduce`` of the count/norm tensors the callers pass.

Eager only (collectives, Python ints from tensors). ``torch.distributed`` is imported lazily so a
build without it still imports funcprune.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeGuard, cast

import torch

if TYPE_CHECKING:  # never imported at run time (see is_dtensor)
    from torch.distributed.tensor import DTensor


def _dtensor_types():
    from torch.distributed.tensor import DTensor, Replicate, Shard

    return DTensor, Shard, Replicate


def is_dtensor(t: Any) -> TypeGuard[DTensor]:
    """True for a ``torch.distributed.tensor.DTensor`` (False where torch has no distributed build).

    Never imports ``torch.distributed.tensor``: no DTensor exists before that module is loaded.
    """
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (differentiable), the tensor itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def check_placements(name: str, t: DTensor) -> None:
    """Raise unless ``t`` is laid out as ``Shard(d)``/``Replicate()`` on a 1-D or 2-D mesh.

    Raises:
      ValueError: a ``Partial`` (pending-sum) placement, any other placement type, or a mesh of
        more than 2 dims, naming the leaf.
    """
    _, Shard, Replicate = _dtensor_types()
    if t.device_mesh.ndim > 2:
        raise ValueError(f"{name}: a {t.device_mesh.ndim}-D device mesh is not supported (1-D or 2-D)")
    for mesh_dim, p in enumerate(t.placements):
        if p.is_partial():
            raise ValueError(
                f"{name}: placement {p} on mesh dim {mesh_dim} is a pending sum; redistribute it "
                f"to Shard/Replicate (e.g. dtensor.redistribute(placements=[Replicate()])) first"
            )
        if type(p) not in (Shard, Replicate):  # _StridedShard & co.: offsets are not one block
            raise ValueError(f"{name}: placement {p} on mesh dim {mesh_dim} is not supported (Shard(d) or Replicate())")


def split_kinds(named: dict, what: str = "selection") -> bool:
    """True if every leaf of ``named`` is a DTensor on one mesh, False if none is.

    Raises:
      ValueError: DTensor and plain leaves mixed, or DTensors on different meshes (naming a leaf
        of each), or an unsupported placement.
    """
    dist = [name for name, t in named.items() if is_dtensor(t)]
    if not dist:
        return False
    plain = [name for name, t in named.items() if not is_dtensor(t)]
    if plain:
        raise ValueError(
            f"one {what} mixes DTensor leaves ({dist[0]!r}) and plain tensors ({plain[0]!r}); "
            f"make every leaf a DTensor (distribute_tensor) or none"
        )
    first = named[dist[0]].device_mesh
    for name in dist:
        check_placements(name, named[name])
        if named[name].device_mesh != first:
            raise ValueError(
                f"one {what} spans two device meshes: {dist[0]!r} on {first}, {name!r} on {named[name].device_mesh}"
            )
    return True


def offset_and_shape(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(global offset, local shape)`` of this rank's shard (zeros and the full shape for a plain tensor)."""
    if not is_dtensor(t):
        return (0,) * t.dim(), tuple(t.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return tuple(offset), tuple(shape)


def counts_here(t: torch.Tensor) -> bool:
    """Whether this rank's copy of ``t`` is the one counted in a sum across the mesh.

    A ``Replicate`` mesh dim holds the same entries at every coordinate: only coordinate 0 counts
    them, so a sum over the mesh counts each entry once. Plain tensors always count.
    """
    if not is_dtensor(t):
        return True
    _, _, Replicate = _dtensor_types()
    coord = t.device_mesh.get_coordinate()
    if coord is None:  # this rank is not in the mesh: it holds nothing
        return False
    return all(c == 0 for c, p in zip(coord, t.placements) if isinstance(p, Replicate))


def mesh_sum(mesh, op: str = "sum") -> Any | None:
    """A callable reducing a tensor in place across every rank of ``mesh`` (None for no mesh).

    One ``all_reduce`` per mesh dim (over that dim's group): the sum over a 2-D mesh is the sum of
    the row sums. ``op`` is ``"sum"`` or ``"max"``. The callers send only count, norm or seed
    tensors, never a tensor's entries.
    """
    if mesh is None:
        return None
    dist = torch.distributed
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]

    def reduce(t: torch.Tensor) -> torch.Tensor:
        for mesh_dim in range(mesh.ndim):
            dist.all_reduce(t, op=reduce_op, group=mesh.get_group(mesh_dim))
        return t

    return reduce


def mesh_of(tensors: Iterable[torch.Tensor]):
    """The device mesh of the first DTensor among ``tensors`` (None if there is none)."""
    for t in tensors:
        if is_dtensor(t):
            return t.device_mesh
    return None


def outside_mesh(tensors: Iterable[torch.Tensor]) -> bool:
    """True when the first DTensor among ``tensors`` lives on a mesh that does not include this rank.

    Such a rank holds no entries (DTensor gives it empty local shards) and belongs to none of the
    mesh's process groups: the selections return masks with empty local shards there, with no
    communication, as DTensor ops do.
    """
    mesh = mesh_of(tensors)
    return mesh is not None and mesh.get_coordinate() is None


def empty_mask_like(param: torch.Tensor) -> torch.Tensor:
    """A bool DTensor mask laid out like ``param`` for a rank outside its mesh (an empty local shard)."""
    return like_param(torch.empty(0, dtype=torch.bool, device=local(param).device), param)


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    """Row-major strides of ``shape`` (in entries)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def global_index(t: torch.Tensor, start: int, count: int, base: int = 0) -> torch.Tensor:
    """Global row-major flat indices (int64, plus ``base``) of local entries ``start .. start+count-1``.

    Local entries are numbered row-major in the local shard (``local(t).reshape(-1)``); their
    index in the full tensor follows from the shard's global offset (see :func:`flat_index`).
    """
    offset, shape = offset_and_shape(t)
    return flat_index(offset, shape, tuple(t.shape), start, count, base, local(t).device)


def flat_index(
    offset: Sequence[int],
    local_shape: Sequence[int],
    global_shape: Sequence[int],
    start: int,
    count: int,
    base: int = 0,
    device=None,
) -> torch.Tensor:
    """``base`` + global row-major flat index of local entries ``start .. start+count-1`` of a block.

    The block has ``local_shape`` and sits at ``offset`` in a tensor of ``global_shape``. int64
    throughout (exact past 2**31); only ``count``-sized temporaries (a chunk, never the block).

    Example:
      >>> flat_index((1, 2), (2, 2), (3, 5), 0, 4).tolist()
      [7, 8, 12, 13]
    """
    pos = torch.arange(start, start + count, dtype=torch.int64, device=device)
    strides = contiguous_strides(global_shape)
    split = [d for d, (size, full) in enumerate(zip(local_shape, global_shape)) if size != full]
    if not split or all(size <= 1 for size in local_shape[: split[-1]]):
        # one contiguous run of the full tensor's flat order (e.g. a Shard(0) block): an offset
        return pos.add_(base + sum(off * stride for off, stride in zip(offset, strides)))
    out = torch.full((count,), base, dtype=torch.int64, device=device)
    for size, off, stride in zip(reversed(local_shape), reversed(offset), reversed(strides)):
        if size:
            out += (pos % size + off) * stride
            pos = pos.div_(size, rounding_mode="floor")
    return out


def like_param(local_mask: torch.Tensor, param: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """``local_mask`` (this rank's shard) as a DTensor with ``param``'s mesh, placements, shape and stride.

    ``shape``: the global shape when it is not ``param``'s (a slice of ``param``'s columns, laid out
    like its rows).
    """
    if not is_dtensor(param):
        return local_mask
    DTensor = _dtensor_types()[0]
    shape = torch.Size(param.shape if shape is None else shape)
    return DTensor.from_local(
        local_mask.contiguous(),  # the strides below say row-major
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=shape,
        stride=contiguous_strides(shape),
    )


def aligned(t: torch.Tensor, param: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` (a mask or scores DTensor) laid out like ``param``, without moving any entry between ranks.

    Only two layouts are accepted: ``param``'s own placements, or ``Replicate()`` on some mesh dims
    where ``param`` is sharded (each rank then takes its slice of what it already holds: a local
    chunk, no communication). A ``Shard`` placement that differs from the param's would need a
    shard to travel (DTensor's redistribute falls back to an all-gather on gloo), so it is refused:
    lay the masks/scores out like the params (e.g. build them from the params, or
    ``distribute_tensor(full, param.device_mesh, param.placements)``).

    Raises:
      ValueError: ``t`` is a plain tensor for a DTensor param or the other way round, lives on
        another mesh, has an unsupported placement, or is sharded differently from ``param``.
    """
    if is_dtensor(t) != is_dtensor(param):
        kinds = ("a DTensor", "a plain tensor")
        raise ValueError(
            f"the {what} is {kinds[not is_dtensor(t)]} but the param is "
            f"{kinds[not is_dtensor(param)]}; give both as DTensors (or neither)"
        )
    if not is_dtensor(t):
        return t
    param = cast("DTensor", param)  # a DTensor like t: checked above
    check_placements(what, t)
    if tuple(t.placements) == tuple(param.placements):
        return t
    if t.device_mesh != param.device_mesh:
        raise ValueError(f"the {what} lives on mesh {t.device_mesh}, the param on {param.device_mesh}")
    _, _, Replicate = _dtensor_types()
    for mesh_dim, (mine, theirs) in enumerate(zip(t.placements, param.placements)):
        if mine != theirs and not isinstance(mine, Replicate):
            raise ValueError(
                f"the {what} has placements {tuple(t.placements)} but the param has "
                f"{tuple(param.placements)} (mesh dim {mesh_dim}: {mine} vs {theirs}); moving shards "
                f"between ranks is not done here: lay the {what} out like the param (its placements, "
                f"or Replicate() where the param is sharded)"
            )
    if t.dtype == torch.bool:  # Replicate -> Shard is a local chunk; bool goes through uint8 like every move
        return redistribute(cast("DTensor", t.to(torch.uint8)), param.placements).to(torch.bool)
    return redistribute(t, param.placements)


def redistribute(t: DTensor, placements: Sequence[Any]) -> torch.Tensor:
    """``t`` with ``placements`` (only ``Replicate`` -> ``Shard`` moves reach here: local chunks)."""
    return t.redistribute(t.device_mesh, list(placements))


def stacked(masks: list[DTensor]) -> torch.Tensor:
    """K DTensor masks of one layout stacked along a new dim 0 (shard dims shift by one), locally."""
    DTensor, Shard, _ = _dtensor_types()
    first = masks[0]
    placements = [Shard(p.dim % first.dim() + 1) if isinstance(p, Shard) else p for p in first.placements]
    shape = torch.Size((len(masks), *first.shape))
    return DTensor.from_local(
        torch.stack([local(m) for m in masks]),
        first.device_mesh,
        placements,
        run_check=False,
        shape=shape,
        stride=contiguous_strides(shape),
    )


def unstacked(t: DTensor, k: int) -> torch.Tensor:
    """Entry ``k`` along dim 0 of a stacked DTensor, locally (shard dims shift back by one).

    Raises:
      ValueError: the stack dim itself is sharded.
    """
    DTensor, Shard, _ = _dtensor_types()
    if any(isinstance(p, Shard) and p.dim % t.dim() == 0 for p in t.placements):
        raise ValueError(f"the stack dim (0) is sharded ({t.placements}); shard the per-mask dims only")
    placements = [Shard(p.dim % t.dim() - 1) if isinstance(p, Shard) else p for p in t.placements]
    shape = t.shape[1:]
    return DTensor.from_local(
        t.to_local()[k], t.device_mesh, placements, run_check=False, shape=shape, stride=contiguous_strides(shape)
    )


def numel(t: torch.Tensor) -> int:
    """Entries of the full tensor (a DTensor's global size)."""
    return math.prod(t.shape)
