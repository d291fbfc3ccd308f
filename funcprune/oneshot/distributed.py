"""One-shot pruning over torch.distributed: ranks that agree, FSDP2-sharded rows, FSDP2 blocks.

Data-parallel calibration needs nothing here: statistics are sums, so :func:`funcprune.oneshot.stats.all_reduce`
adds every rank's share once per block and each rank prunes the same weights from the same sums.
This module holds what a sharded model adds:

* :func:`check_same`: every rank passed the same settings (a fingerprint per field, one
  ``all_reduce``), so a disagreement is a ``ValueError`` on every rank, not a hang.
* :func:`prune_layer`: one ``nn.Linear`` weight held as a DTensor sharded by rows (FSDP2's
  ``Shard(0)``) pruned on each rank's own rows with the all-reduced statistics, never gathered.
  Wanda and N:M patterns decide row by row; SparseGPT's reconstruction is row-wise given the
  (replicated) inverse Hessian, and its per-column-block selection over all rows is an exact global
  selection (the selection kernel's global cut over DTensor shards: a radix cut whose histograms are
  summed over the mesh, ties to the lowest flat index of the block), so the masks are one process's.
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

from .. import _amount, _dtensor, patterns, select
from . import methods

if TYPE_CHECKING:  # types only: torch.distributed is imported lazily
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor


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
# Rows of a sharded weight.


class Rows:
    """Where this rank's rows of a row-sharded 2-D weight sit, and the weight's mesh and placements."""

    def __init__(self, weight: torch.Tensor, what: str = "weight") -> None:
        if weight.dim() != 2:
            raise ValueError(
                f"{what}: expected a 2-D (out_features, in_features) weight, got shape {tuple(weight.shape)}"
            )
        if _dtensor.is_dtensor(weight):
            _check_rows(what, weight)
        offset, shape = _dtensor.offset_and_shape(weight)
        self.first, self.count = offset[0], shape[0]
        self.total = weight.shape[0]
        self.mesh = _dtensor.mesh_of([weight])
        self.placements = tuple(cast("DTensor", weight).placements) if self.mesh is not None else None


def _check_rows(what: str, weight: DTensor) -> None:
    """Only ``Shard(0)`` or ``Replicate`` placements: rows whole on every rank."""
    _dtensor.check_placements(what, weight)
    placement: Any  # a Shard has .dim; Placement.is_shard() does not narrow to it
    for placement in weight.placements:
        if placement.is_shard() and placement.dim != 0:
            raise ValueError(
                f"{what}: sharded along dim {placement.dim} ({tuple(weight.placements)}); one-shot "
                f"pruning of a DTensor weight needs whole rows on each rank (Shard(0), as FSDP2 "
                f"shards, or Replicate)"
            )


def global_block_keep(
    key: torch.Tensor, keep: torch.Tensor | None, amount: _amount.Amount, rows: Rows, what: str = "block"
) -> torch.Tensor:
    """This rank's keep mask after pruning ``amount`` of a block's alive entries over ALL rows, by smallest key.

    ``key`` (``(local rows, columns)``, non-negative) and ``keep`` are this rank's rows of the block;
    the count is ``round(amount * alive entries of the whole block)`` (torch's amount rule) and
    the selection is exact across ranks: the selection kernel's global cut over the block laid out
    like the weight (a radix cut whose histograms are summed over the mesh), ties to the lowest flat
    index of the full block (row-major), as :func:`funcprune.oneshot.sparsegpt` breaks them in one
    process. A plain tensor is one rank holding every row (no collective).
    """
    if rows.mesh is None:  # one pool over the block, row-major, ties to the lower index
        flat = key.reshape(1, -1)
        flat_keep = None if keep is None else keep.reshape(1, -1)
        return select.prune_units(
            flat, select.rows(flat.shape, 0), amount, flat, mask=flat_keep, what=f"entries of {what}"
        ).view(key.shape)
    from torch.distributed.tensor import DTensor

    shape = (rows.total, key.shape[1])

    def laid_out(local: torch.Tensor) -> torch.Tensor:
        return DTensor.from_local(
            local.contiguous(),
            rows.mesh,
            rows.placements,
            run_check=False,
            shape=cast(torch.Size, shape),
            stride=(shape[1], 1),
        )

    like = laid_out(key)
    out = select.prune_units(
        like,
        select.entries(shape),
        amount,
        like,
        mask=None if keep is None else laid_out(keep),
        what=f"entries of {what}",
    )
    return cast("DTensor", out).to_local()


# ----------------------------------------------------------------------------------------------
# One layer's rows.


def prune_layer(
    weight: torch.Tensor,
    stats: Any,
    method: str,
    amount: _amount.Amount,
    *,
    pattern=None,
    mask: torch.Tensor | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    name: str = "weight",
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Prune a row-sharded ``(out, in)`` weight on each rank's own rows: ``(new weight or None, keep mask)``.

    ``weight`` is a DTensor with ``Shard(0)`` (FSDP2) or ``Replicate`` placements, or a plain tensor
    (one rank, every row). ``stats`` holds the all-reduced sums of the layer's inputs (``sumsq``
    for Wanda, ``hessian`` for SparseGPT), the same on every rank. No weight is gathered:

    * ``"magnitude"``: ``|W|`` over the whole weight (torch's ``l1_unstructured`` count) by the
      exact global cut over all rows; with ``pattern``, N:M of ``|W|`` per row.
    * ``"wanda"``: :func:`funcprune.oneshot.wanda` on the local rows (its selection is per row).
    * ``"sparsegpt"``: the reconstruction of :func:`funcprune.oneshot.sparsegpt` on the local rows
      (row-wise, given ``H^-1`` computed alike on every rank from the same sums); each block's
      unstructured mask is the exact global cut over all rows (:func:`global_block_keep`); N:M
      groups are chosen per row.

    Args:
      weight: the layer's weight, ``(out_features, in_features)``.
      stats: the layer's statistics (fields ``sumsq`` and ``hessian``, as :mod:`funcprune.oneshot.stats` sums them).
      method: ``"magnitude"``, ``"wanda"`` or ``"sparsegpt"``.
      amount: the fraction (or, for magnitude and Wanda, count) to prune.
      pattern: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs per row.
      mask: an existing keep mask laid out like ``weight``.
      block_size, damp: SparseGPT's.
      name: the weight's name, for messages.

    Returns:
      ``(new_weight, keep)`` laid out like ``weight``; ``new_weight`` is None unless SparseGPT changed it.

    Raises:
      ValueError: a weight sharded other than by rows, or what the one-process functions raise.
    """
    rows = Rows(weight, name)
    local = _dtensor.local(weight).detach()
    keep = None if mask is None else _dtensor.local(_dtensor.aligned(mask, weight, f"mask of {name}"))
    keep = None if keep is None else (keep if keep.dtype == torch.bool else keep != 0)
    pattern = methods.check_pattern(pattern, weight.shape[1], name)
    new = None
    if local.shape[0] == 0 and (method == "wanda" or method == "magnitude" and pattern is not None):
        # a rank holding no rows (more ranks than rows): the same checks on one dummy row, no entries
        _, dummy = prune_layer(
            torch.zeros((1,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device),
            stats,
            method,
            amount,
            pattern=pattern,
            name=name,
        )
        return None, _dtensor.like_param(dummy[:0], weight)
    if method == "magnitude":
        if pattern is not None:
            out = patterns.nm_structured(local, pattern[0], pattern[1], 1, mask=keep)
        else:
            _amount.validate_amount(amount)
            out = global_block_keep(local.abs(), keep, amount, rows, f"{name} (magnitude)")
    elif method == "wanda":
        out = methods.wanda(local, stats.sumsq.sqrt(), amount, pattern=pattern, mask=keep)
    elif method == "sparsegpt":
        new, out = _sparsegpt_rows(local, stats.hessian, amount, rows, pattern, keep, block_size, damp, name)
        new = _dtensor.like_param(new, weight)
    else:
        raise ValueError(f"method must be 'magnitude', 'wanda' or 'sparsegpt', got {method!r}")
    return new, _dtensor.like_param(out, weight)


def _sparsegpt_rows(local, hessian, amount, rows, pattern, keep, block_size, damp, name):
    """:func:`funcprune.oneshot.sparsegpt` on this rank's rows, each block's selection over all rows.

    The same operations in the same order as the one-process function, which this copy follows
    until it takes a block selector (then this becomes a call to it).
    """
    methods.check_sparsegpt(local, hessian, amount, pattern, block_size, damp, name)
    dtype = hessian.dtype
    with methods.ieee_matmul():
        dead, hinv = methods.inverse_factor(hessian.to(local.device), float(damp))
        w = torch.where(dead.reshape(1, -1), 0, local.to(dtype))
        prior = keep is not None
        keep = keep.clone() if prior else torch.ones_like(w, dtype=torch.bool)

        def choose(scores, keep1):
            return global_block_keep(scores, keep1, amount, rows, f"a block of {name}")

        for i1 in range(0, w.shape[1], block_size):
            methods.prune_block(
                w, keep, hinv, i1, min(i1 + block_size, w.shape[1]), amount, pattern, choose=choose, prior=prior
            )
    return w.to(local.dtype), keep


# ----------------------------------------------------------------------------------------------
# Running a block with given parameters.


def _is_fsdp(module: nn.Module) -> bool:
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
        if _is_fsdp(module):
            cast("FSDPModule", module).reset_iter_state()
            return


def _same(value: torch.Tensor, param: torch.Tensor) -> bool:
    """``value`` is ``param`` or a view of all of its local data (``param.detach()``): nothing to write."""
    if value is param:
        return True
    a, b = _dtensor.local(value), _dtensor.local(param)
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
    if not _is_fsdp(block):

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
            not (_dtensor.is_dtensor(target) and _dtensor.is_dtensor(value))
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
