"""One-shot pruning over torch.distributed: ranks that agree, FSDP2-sharded rows, FSDP2 blocks.

Data-parallel calibration needs nothing here: statistics are sums, so :func:`funcprune.oneshot.stats.all_reduce`
adds every rank's share once per block and each rank prunes the same weights from the same sums.
This module holds what a sharded model adds to running it (FSDP2-sharded weights themselves are
pruned by the methods, which work on each rank's rows through :mod:`funcprune._backend`):

* :func:`check_same`: every rank passed the same settings (a fingerprint per field, one
  ``all_reduce``), so a disagreement is a ``ValueError`` on every rank, not a hang.
* :func:`block_runner`: runs a block's forwards with given (pruned) parameters. An FSDP2 block is
  gathered once (FSDP's own all-gather, which sees the pruned shards written into its sharded
  parameters for the duration), then every batch runs without a collective, so ranks may hold
  different numbers of batches; its parameters are restored afterwards.

Eager only: collectives, and Python ints read from count tensors.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .. import _backend

if TYPE_CHECKING:  # types only: torch.distributed is imported lazily
    from torch.distributed.fsdp import FSDPModule


def _world(group) -> int | None:
    """The size of ``group`` (the default group when None) when torch.distributed is running, else None."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise ValueError("group= was given but torch.distributed is not initialized")
        return None
    return dist.get_world_size(group)


def _digest(value: Any) -> int:
    """A 62-bit fingerprint of ``value``'s ``repr`` (the same on every rank for equal settings)."""
    return int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:8], "little") >> 2


def check_same(
    group: Any | None = None, device: torch.device | None = None, *, batches: int | None = None, **fields: Any
) -> None:
    """Raise ``ValueError`` on every rank when the ranks of ``group`` passed different ``fields`` (or no batches).

    Each field is fingerprinted (a hash of its ``repr``); one ``all_reduce`` (max) of the
    fingerprints, their negations and ``-batches`` finds, on every rank alike, the fields that
    differ and whether some rank holds no calibration batch. Call it before any collective whose
    shape depends on the fields. Without torch.distributed it does nothing.

    Args:
      group: the process group (default: the default group).
      device: where the fingerprint tensor lives (the group's backend device; CPU for gloo).
      batches: this rank's number of calibration batches (ranks may differ; none may have 0).
      fields: the settings every rank must share, by name (amounts, method, layer names and shapes ...).

    Raises:
      ValueError: naming every field whose value differs between ranks, or an empty calibration on some rank.

    Example:
      >>> check_same(method="wanda", amount=0.5)  # one process: nothing to compare
    """
    if _world(group) is None:
        return
    if device is None and torch.distributed.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    names = sorted(fields)
    prints = torch.tensor([_digest(fields[name]) for name in names], dtype=torch.int64, device=device)
    fewest = torch.tensor([-(1 if batches is None else batches)], dtype=torch.int64, device=device)
    both: Any = torch.cat([prints, -prints, fewest])  # a tensor, then its list
    torch.distributed.all_reduce(both, op=torch.distributed.ReduceOp.MAX, group=group)
    both = both.tolist()
    differ = [name for name, hi, lo in zip(names, both[: len(names)], both[len(names) : -1]) if hi != -lo]
    if differ:
        here = ", ".join(f"{name}={fields[name]!r}" for name in differ)
        raise ValueError(
            f"ranks disagree on {', '.join(differ)} (this rank: {here}); every rank must pass the "
            f"same settings and layers to a distributed one-shot prune"
        )
    if -both[-1] < 1:
        raise ValueError(
            f"a rank has an empty calibration (this rank: {batches} batches): give every rank one batch or more"
        )


# ----------------------------------------------------------------------------------------------
# Running a block with given parameters.


def is_fsdp(module: nn.Module) -> bool:
    """Whether ``module`` is sharded by FSDP2 (``fully_shard``)."""
    fsdp = _fsdp_module_type()
    return fsdp is not None and isinstance(module, fsdp)


def _fsdp_module_type():
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return None
    return FSDPModule


def settle(model: nn.Module) -> None:
    """After a forward stopped by an exception (the capture of the first block's inputs): FSDP2 sharded and idle.

    FSDP2 leaves the modules an aborted forward entered gathered and mid-forward; its root's
    ``reset_iter_state`` reshards them and clears that state, so the blocks' parameters read
    afterwards are the sharded ones and the user's next forward (and backward) runs as usual. A
    model without FSDP2 is left alone.
    """
    for module in model.modules():  # pre-order: the outermost FSDP2 module is the root
        if is_fsdp(module):
            cast("FSDPModule", module).reset_iter_state()
            return


def _same(value: torch.Tensor, param: torch.Tensor) -> bool:
    """``value`` is ``param`` or a view of all of its local data (``param.detach()``): nothing to write."""
    if value is param:
        return True
    a, b = _backend.local(value), _backend.local(param)
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride() and a.dtype == b.dtype


@contextlib.contextmanager
def block_runner(
    block: nn.Module, params: dict[str, torch.Tensor] | None = None
) -> Iterator[Callable[[tuple, dict], Any]]:
    """A context yielding ``run(args, kwargs)``: ``block``'s forward on ``params`` (names relative to ``block``).

    A plain block runs through ``torch.func.functional_call`` (the block is not touched). An FSDP2
    block (``fully_shard``): the DTensor values among ``params`` that differ from the block's own
    parameters are copied into its sharded parameters (each rank its shard), the block is gathered
    once by FSDP, every ``run`` calls its forward without a collective, and on exit the block is
    resharded and its parameters restored, also when a forward raises.

    Args:
      block: the module to run.
      params: replacement parameters/buffers by name (None: the block's own).

    Returns:
      A context manager yielding the ``run`` callable.
    """
    params = dict(params or {})
    if not is_fsdp(block):

        def run(args: tuple, kwargs: dict) -> Any:
            return (
                torch.func.functional_call(block, params, tuple(args), dict(kwargs))
                if params
                else block(*args, **kwargs)
            )

        yield run
        return
    # a block left gathered (reshard_after_forward=False) would not see the new shards
    cast("FSDPModule", block).reshard()
    own: dict[str, Any] = dict(block.named_parameters())  # DTensors (FSDP2 shards)
    changed: dict[str, Any]  # DTensors, checked below
    changed = {name: value for name, value in params.items() if name in own and not _same(value, own[name])}
    for name, value in changed.items():  # all checked before any is written
        target = own[name]
        if (
            not (_backend.sharded(target) and _backend.sharded(value))
            or tuple(value.placements) != tuple(target.placements)
            or value.shape != target.shape
        ):
            raise ValueError(
                f"{name}: an FSDP2 block runs on parameters laid out like its own (shape "
                f"{tuple(target.shape)}, placements {getattr(target, 'placements', None)}), got "
                f"{tuple(value.shape)}, {getattr(value, 'placements', 'a plain tensor')}"
            )
    saved = {}
    try:
        with torch.no_grad():
            for name, value in changed.items():
                saved[name] = own[name].to_local().clone()
                own[name].to_local().copy_(value.to_local())
        cast("FSDPModule", block).unshard()
        yield lambda args, kwargs: block.forward(*args, **kwargs)  # gathered: FSDP's hooks would gather again
    finally:
        cast("FSDPModule", block).reshard()
        with torch.no_grad():
            for name, local in saved.items():
                own[name].to_local().copy_(local)
