"""Sharded mask checkpoints through ``torch.distributed.checkpoint`` (DCP), reshardable on load.

Public through :mod:`funcprune.distributed`: :func:`save_masks_dcp` and :func:`load_masks_dcp`.

Layout (format ``funcprune.masks.dcp`` version 2): one DCP checkpoint whose state dict holds

* ``"funcprune_masks"``: a JSON string ``{"format", "version", "save_id", "writers", "leaves":
  {name: {"shape", "packed", "kept"}}}`` (a random id of this save, how many ranks wrote it, and
  per leaf the full shape, how the mask is stored, and how many entries it keeps);
* ``"funcprune_masks/<name>"``: one tensor per mask, either

  - **packed** (``uint8``): the mask's last dim packed 8 entries per byte, first entry in the most
    significant bit (``numpy.packbits(mask, axis=-1)``, :mod:`funcprune._bits`), full shape
    ``(*shape[:-1], ceil(shape[-1] / 8))``, saved with the mask's own placements. Every dim but the
    last keeps its size, so a shard on any of them is a shard of the packed tensor too and DCP
    reshards it like any tensor: 1 bit per entry, plus at most 7 bits of padding per row;
  - **bool** (1 byte per entry) where the last dim is the sharded one (1-D masks under FSDP2's
    ``Shard(0)``, ``Shard(-1)``) or the mask is 0-D: a shard boundary inside a byte cannot be
    packed locally, and DCP reshards whole elements only;
* ``"funcprune_masks_stamp/<rank>"``: each writing rank's stamp, the save id and a checksum of every
  shard it saved (:mod:`funcprune._dcp_integrity`).

Loading builds its targets from ``like`` (any placements, any mesh, or plain tensors in one
process), so a checkpoint saved from 2 ranks loads into 4, into a 2-D mesh or into one process. A
packed mask loaded into a layout that shards its last dim is read with that mesh dim replicated
(a temporary of ``numel / 8`` bytes divided by the other shard counts) and sliced locally. After
loading, every stamp's save id is checked against the metadata's, and every leaf's kept count and
every saved shard's checksum against what was saved (one ``all_reduce`` of a vector of counts and
checksum parts), so a damaged shard, or a directory mixing files of two saves, raises
``ValueError`` naming the leaf and the shard instead of loading a wrong mask. Version 1
checkpoints (funcprune 1.1, no stamps) still load, with their kept counts checked.

Eager only: these are collectives (every rank of the process group calls them with the same tree
structure) and read counts back to Python.
"""

from __future__ import annotations

import json
import secrets
import warnings
from typing import TYPE_CHECKING, Any

import torch

from . import _dcp_integrity as integrity
from . import _pytree
from ._bits import pack_last, packed_shape, unpack_last
from ._dtensor import is_dtensor
from ._dtensor import local as _local
from ._errors import shape_mismatch, unknown_names
from ._pytree import Tree

FORMAT, VERSION = "funcprune.masks.dcp", 2
READS = (1, 2)
if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

HEADER = "funcprune_masks"
PREFIX = HEADER + "/"


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _shard_dims(t: DTensor) -> list[int]:
    """The tensor dims a DTensor is sharded on (normalized), after checking its placements."""
    from torch.distributed.tensor import Replicate, Shard

    dims = []
    for p in t.placements:
        if type(p) is Shard:
            dims.append(p.dim % max(t.dim(), 1))
        elif type(p) is not Replicate:
            raise ValueError(f"placement {p} is not supported in a mask checkpoint (Shard(d) or Replicate())")
    return dims


def _owns(t: torch.Tensor, group) -> bool:
    """Whether this rank's local entries count towards the leaf's total (each entry counted once).

    A DTensor's local shard counts where the rank is in its mesh at coordinate 0 of every
    ``Replicate`` mesh dim; a plain tensor (the same on every rank) counts on rank 0 only.
    """
    dist = _dist()
    if not is_dtensor(t):
        return dist is None or dist.get_rank(group) == 0
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:
        return False
    return all(c == 0 for c, p in zip(coordinate, t.placements) if p.is_replicate())


def _wrap(local: torch.Tensor, like: DTensor, shape, placements=None) -> torch.Tensor:
    """``local`` as a DTensor on ``like``'s mesh (``placements`` or like's) with full ``shape``."""
    from torch.distributed.tensor import DTensor

    stride: list[int] = []
    step = 1
    for size in reversed(tuple(shape)):
        stride.insert(0, step)
        step *= max(size, 1)
    return DTensor.from_local(
        local,
        like.device_mesh,
        placements or like.placements,
        run_check=False,
        shape=torch.Size(shape),
        stride=tuple(stride),
    )


def _local_target(like: torch.Tensor, shape, dtype, placements=None) -> torch.Tensor:
    """An empty tensor laid out like ``like`` (DTensor or plain) with full ``shape`` and ``dtype``."""
    device = like.to_local().device if is_dtensor(like) else like.device
    if not is_dtensor(like):
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    placements = placements or like.placements
    local_shape, _ = compute_local_shape_and_global_offset(torch.Size(shape), like.device_mesh, placements)
    return _wrap(torch.empty(tuple(local_shape), dtype=dtype, device=device), like, shape, placements)


def _counts(named: dict[str, torch.Tensor], extra: list[int] | None = None, group=None) -> list[int]:
    """Per-leaf kept counts over the full masks (+ ``extra`` ints), summed across ranks in one all_reduce."""
    local = [int(_local(m).count_nonzero()) if _owns(m, group) else 0 for m in named.values()]
    values = local + list(extra or [])
    dist = _dist()
    if dist is None or not values:
        return [int(v) for v in values]
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    vector = torch.tensor(values, dtype=torch.int64, device=device)
    dist.all_reduce(vector, group=group)
    return vector.tolist()


def _checkpoint():
    try:
        import torch.distributed.checkpoint as dcp
    except ImportError as err:  # a torch build without distributed support
        raise RuntimeError("mask checkpoints through DCP need torch.distributed (this torch build lacks it)") from err
    return dcp


def _dcp_call(what: str, state: dict, checkpoint_id: Any, process_group: Any) -> None:
    """``dcp.save``/``dcp.load``; in one process without a group, as DCP's single-process mode, quietly."""
    call = getattr(_checkpoint(), what)
    if _dist() is not None:
        call(state, checkpoint_id=checkpoint_id, process_group=process_group)
        return
    with warnings.catch_warnings():  # DCP warns that it assumes one process: that is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        call(state, checkpoint_id=checkpoint_id, no_dist=True)


def save_masks_dcp(masks: Tree, checkpoint_id: Any, *, process_group: Any = None) -> None:
    """Save a masks tree of DTensors (or plain tensors) as one sharded DCP checkpoint.

    A collective: every rank of ``process_group`` calls it with the same tree structure and writes
    only its own shards (replicas are written once). Masks are stored 1 bit per entry, packed along
    the last dim, except where the last dim is sharded or the mask is 0-D (then 1 byte per entry,
    see :mod:`funcprune._dcp` for why). The checkpoint loads with :func:`load_masks_dcp` into any
    world size and placements, or into one process.

    Args:
      masks: pytree of masks (bool, or 0/1 of any dtype; ``True``/nonzero = kept): DTensors with
        ``Shard(d)``/``Replicate()`` placements on any mesh (FSDP2, HSDP), or plain tensors (the
        same on every rank).
      checkpoint_id: where DCP writes (a directory path, or anything ``dcp.save`` accepts).
      process_group: the group that saves (default: the default group, or none in one process).

    Raises:
      TypeError: a leaf that is not a tensor. ValueError: a mask holding values other than 0 and
        1 (checked across the ranks: every rank raises, before anything is written), a
        ``Partial`` placement, or a mask on the ``meta`` device.

    Example:
      >>> import tempfile
      >>> mask = torch.tensor([[True, False, True], [False, False, True]])
      >>> with tempfile.TemporaryDirectory() as tmp:  # one process, plain tensors
      ...     save_masks_dcp({"fc.weight": mask}, tmp)
      ...     load_masks_dcp({"fc.weight": torch.zeros(2, 3)}, tmp)
      {'fc.weight': tensor([[ True, False,  True],
              [False, False,  True]])}
    """
    named = _pytree.named_leaves(masks)
    for name, mask in named.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}: a mask must be a tensor, got {type(mask).__name__}")
        if is_dtensor(mask):
            try:
                _shard_dims(mask)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if _local(mask).device.type == "meta":
            raise ValueError(f"{name}: cannot save a mask without values (device meta)")
    bad = [
        0 if _local(m).dtype == torch.bool or bool(((_local(m) == 0) | (_local(m) == 1)).all()) else 1
        for m in named.values()
    ]
    first = _owns(torch.empty(()), process_group)  # rank 0 draws the save id, the all_reduce spreads it
    summed = _counts(named, bad + [secrets.randbits(62) if first else 0], process_group)
    kept, bad, save_id = summed[: len(named)], summed[len(named) : -1], summed[-1]
    for name, flag in zip(named, bad):
        if flag:  # every rank sees the all-reduced flag: all raise, none is left waiting in dcp.save
            raise ValueError(f"{name}: mask values must be 0 or 1 to round-trip as bits")
    leaves: dict[str, Any] = {}
    state: dict[str, Any] = {}  # DCP's state dict: the mask tensors and the JSON header
    for (name, mask), count in zip(named.items(), kept):
        shape = list(mask.shape)
        packed = mask.dim() >= 1 and not (is_dtensor(mask) and (mask.dim() - 1) in _shard_dims(mask))
        local = _local(mask) != 0
        if packed:
            bits = pack_last(local)
            state[PREFIX + name] = _wrap(bits, mask, packed_shape(shape)) if is_dtensor(mask) else bits
        else:
            state[PREFIX + name] = _wrap(local, mask, shape) if is_dtensor(mask) else local
        leaves[name] = {"shape": shape, "packed": packed, "kept": count}
    dist = _dist()
    rank, writers = (dist.get_rank(process_group), dist.get_world_size(process_group)) if dist else (0, 1)
    state[integrity.STAMP + str(rank)] = integrity.make_stamp(
        save_id, named, [_owns(m, process_group) for m in named.values()]
    )
    state[HEADER] = json.dumps(
        {"format": FORMAT, "version": VERSION, "save_id": save_id, "writers": writers, "leaves": leaves}
    )
    _dcp_call("save", state, checkpoint_id, process_group)


def _header(checkpoint_id: Any, process_group: Any) -> dict:
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    state = {HEADER: ""}
    try:
        _dcp_call("load", state, checkpoint_id, process_group)
    except (Exception, CheckpointException) as err:  # DCP raises several kinds (missing key or files, metadata)
        raise ValueError(
            f"{checkpoint_id!r}: not a readable funcprune DCP mask checkpoint ({type(err).__name__}: "
            f"{(str(err).strip().splitlines() or [''])[0][:200]})"
        ) from err
    try:
        header = json.loads(state[HEADER])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{checkpoint_id!r}: corrupt mask checkpoint header") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{checkpoint_id!r}: not a funcprune DCP mask checkpoint (expected format {FORMAT!r})")
    if header.get("version") not in READS:
        raise ValueError(
            f"{checkpoint_id!r}: unsupported DCP mask checkpoint version {header.get('version')!r} "
            f"(this reads {', '.join(map(str, READS))})"
        )
    return header


def load_masks_dcp(like: Tree, checkpoint_id: Any, *, process_group: Any = None) -> Tree:
    """Load masks saved by :func:`save_masks_dcp`, laid out like ``like`` (resharded as needed).

    A collective, like :func:`save_masks_dcp`. Each rank reads only the parts of the checkpoint
    that its local shards cover, whatever world size and placements saved it.

    Args:
      like: pytree of params or masks giving the target layout: DTensors (any ``Shard``/
        ``Replicate`` placements, any mesh) get DTensor masks with the same mesh and placements;
        plain tensors (e.g. in one process without a process group) get plain bool masks.
      checkpoint_id: what was passed to :func:`save_masks_dcp`.
      process_group: the group that loads (default: the default group, or none in one process).

    Returns:
      A tree shaped like ``like`` holding the checkpoint's masks (bool; dicts omit names the
      checkpoint lacks), on the devices of ``like``'s leaves.

    Raises:
      ValueError: not a funcprune DCP mask checkpoint, a shape that differs from ``like``'s, a
        loaded mask whose kept count or shard checksum differs from the saved one (a damaged
        shard, naming the leaf and the rank that wrote the shard), or files of two saves in one
        checkpoint (every rank raises).
      KeyError: a checkpoint name that ``like`` lacks.
    """
    named = _pytree.named_leaves(like)
    header = _header(checkpoint_id, process_group)
    leaves = header["leaves"]
    checked = header["version"] >= 2  # version 1 (funcprune 1.1) has no stamps: its kept counts are checked
    unknown = [name for name in leaves if name not in named]
    if unknown:
        raise unknown_names(unknown, named, "checkpoint")
    state, plans = {}, {}
    for name, info in leaves.items():
        target, shape = named[name], list(info["shape"])
        if list(target.shape) != shape:
            raise shape_mismatch("checkpoint mask", shape, "the param", target.shape, name=f"{checkpoint_id!r}: {name}")
        if is_dtensor(target):
            try:
                shard_dims = _shard_dims(target)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        if not info["packed"]:
            state[PREFIX + name] = _local_target(target, shape, torch.bool)
            plans[name] = "bool"
        elif is_dtensor(target) and target.dim() - 1 in shard_dims:
            from torch.distributed.tensor import Replicate, Shard

            last = target.dim() - 1
            placements = [
                Replicate() if type(p) is Shard and p.dim % target.dim() == last else p for p in target.placements
            ]
            state[PREFIX + name] = _local_target(target, packed_shape(shape), torch.uint8, placements)
            plans[name] = "slice"
        else:
            state[PREFIX + name] = _local_target(target, packed_shape(shape), torch.uint8)
            plans[name] = "packed"
    if checked:
        length = integrity.stamp_length([info["shape"] for info in leaves.values()])
        for rank in range(header["writers"]):
            state[integrity.STAMP + str(rank)] = torch.empty(length, dtype=torch.int64)
    if state:
        _dcp_call("load", state, checkpoint_id, process_group)
    where = repr(checkpoint_id)
    blocks = (
        integrity.read_stamps(
            where,
            [state[integrity.STAMP + str(rank)] for rank in range(header["writers"])],
            header["save_id"],
            {name: info["shape"] for name, info in leaves.items()},
        )
        if checked
        else {}
    )
    out = {}
    for name, plan in plans.items():
        target, loaded, shape = named[name], state[PREFIX + name], leaves[name]["shape"]
        local = _local(loaded)
        if plan == "bool":
            out[name] = loaded
            continue
        mask = unpack_last(local, shape[-1])
        if plan == "slice":
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            local_shape, offset = compute_local_shape_and_global_offset(
                torch.Size(shape), target.device_mesh, target.placements
            )
            mask = mask.narrow(-1, offset[-1], local_shape[-1]).contiguous()
        out[name] = _wrap(mask, target, shape) if is_dtensor(target) else mask
    parts = [
        part
        for name, mask in out.items()
        for part in integrity.partial_checksums(
            name, mask, _owns(mask, process_group), header.get("save_id", 0), blocks.get(name, [])
        )
    ]
    summed = _counts(out, parts, group=process_group)  # one all_reduce: kept counts and checksum parts
    kept, sums = summed[: len(out)], summed[len(out) :]
    for name, count in zip(out, kept):
        if count != leaves[name]["kept"]:
            raise ValueError(
                f"{where}: {name}: the loaded mask keeps {count} entries but "
                f"{leaves[name]['kept']} were saved: the checkpoint is damaged or was not written by "
                f"save_masks_dcp"
            )
    for name in out:
        these = blocks.get(name, [])
        integrity.check_blocks(where, name, these, sums[: len(these)])
        sums = sums[len(these) :]
    return _pytree.like(like, out)
