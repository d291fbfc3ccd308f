"""Calibration statistics of the inputs of a block's linear layers: sums, so ranks add them up.

For every distinct input tensor of a block's linear layers (q/k/v read one tensor, gate/up
another) a :class:`LayerStats` holds ``sum x_j^2`` per input feature (Wanda's ``||X_j||^2``), the
Hessian ``sum x xᵀ`` (SparseGPT's, up to its ``2/n`` scale, which cancels) and the number of
token rows seen. Being sums, data-parallel calibration is one :func:`all_reduce` per block:
every rank then holds the statistics of all ranks' batches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .methods import ieee_matmul

__all__ = ["LayerStats", "Collector", "all_reduce"]


class LayerStats(NamedTuple):
    """Sums over the calibration token rows of one input tensor (shared by the layers that read it)."""

    #: ``(in_features,)``: ``sum_t x_tj^2``; Wanda's input norm is its square root (None if not needed)
    sumsq: torch.Tensor | None
    #: ``(in_features, in_features)``: ``sum_t x_t x_tᵀ`` (None if not needed)
    hessian: torch.Tensor | None
    #: 0-d int64: how many token rows were summed
    tokens: torch.Tensor


def all_reduce(stats: dict[str, LayerStats], group=None) -> dict[str, LayerStats]:
    """Sum every statistic over the ranks of ``group`` (the default group), in one collective per dtype.

    A no-op returning ``stats`` when torch.distributed is not initialized and no ``group`` is
    given. Every rank must pass the same keys with the same shapes (the same model and layers).

    Args:
      stats: the block's statistics, keyed by the name of the first layer reading each input.
      group: a process group, or None for the default one.

    Returns:
      New :class:`LayerStats` holding the sums over all ranks (``stats`` is not modified).
    """
    import torch.distributed as dist

    if group is None and not (dist.is_available() and dist.is_initialized()):
        return stats
    names = sorted(stats)
    fields: list[tuple[str, int, torch.Tensor]] = []
    for name in names:
        for index, value in enumerate(stats[name]):
            if value is not None:
                fields.append((name, index, value))
    by_dtype: dict[torch.dtype, list[int]] = {}
    for position, (_, _, value) in enumerate(fields):
        by_dtype.setdefault(value.dtype, []).append(position)
    summed: dict[int, torch.Tensor] = {}
    for dtype in sorted(by_dtype, key=str):  # the same order on every rank
        positions = by_dtype[dtype]
        flat = torch.cat([fields[p][2].reshape(-1) for p in positions])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for p in positions:
            value = fields[p][2]
            summed[p] = flat[offset : offset + value.numel()].view(value.shape)
            offset += value.numel()
    out: dict[str, list] = {name: list(stats[name]) for name in names}
    for position, (name, index, _) in enumerate(fields):
        out[name][index] = summed[position]
    return {name: LayerStats(*values) for name, values in out.items()}


class Collector:
    """Forward pre-hooks on a block's linear layers that sum their inputs' statistics.

    Layers fed the same tensor object in one forward share one :class:`LayerStats` (computed once),
    keyed by the first such layer's name; :attr:`key_of` maps every layer to its key.

    Args:
      layers: ``{name: (module, in_features)}`` of the block's linear layers.
      sumsq: collect ``sum x^2`` (Wanda, OWL).
      hessian: collect ``sum x xᵀ`` (SparseGPT).
      dtype: float32 or float64, the statistics' dtype.
    """

    def __init__(
        self, layers: dict[str, tuple[torch.nn.Module, int]], *, sumsq: bool, hessian: bool, dtype: torch.dtype
    ) -> None:
        self.layers, self.want_sumsq, self.want_hessian, self.dtype = layers, sumsq, hessian, dtype
        self.key_of: dict[str, str] = {}
        self.sums: dict[str, list] = {}
        self.seen: list[tuple[torch.Tensor, str]] = []  # this forward's input tensors (identity, not value)
        self.handles: list = []  # torch's RemovableHandle

    def __enter__(self) -> Collector:
        for name, (module, _) in self.layers.items():
            self.handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        self.seen = []

    def new_batch(self) -> None:
        """Forget the previous forward's tensors (called before each calibration batch)."""
        self.seen = []

    def _hook(self, name: str) -> Callable:
        def pre(module, args):
            x = args[0]
            for tensor, key in self.seen:
                if tensor is x:
                    self.key_of.setdefault(name, key)
                    return None
            key = self.key_of.setdefault(name, name)
            self.seen.append((x, key))
            self._add(key, x, self.layers[name][1])
            return None

        return pre

    def _add(self, key: str, x: torch.Tensor, features: int) -> None:
        rows = x.detach().reshape(-1, features).to(self.dtype)
        sums = self.sums.get(key)
        if sums is None:
            zeros = rows.new_zeros
            sums = self.sums[key] = [
                zeros(features) if self.want_sumsq else None,
                zeros(features, features) if self.want_hessian else None,
                torch.zeros((), dtype=torch.int64, device=rows.device),
            ]
        if sums[0] is not None:
            sums[0] += (rows * rows).sum(0)
        if sums[1] is not None:
            with ieee_matmul():
                sums[1].addmm_(rows.mT, rows)
        sums[2] += rows.shape[0]

    def stats(self) -> dict[str, LayerStats]:
        """The sums so far, keyed by the first layer reading each input."""
        return {key: LayerStats(*sums) for key, sums in self.sums.items()}
