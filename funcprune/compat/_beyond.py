"""Compat pruning methods beyond ``torch.nn.utils.prune``: N:M, block, and channel-with-bias.

Module-mutating shells, exactly like the built-in compat methods: ``apply`` adds
``<name>_orig``/``<name>_mask`` and the forward pre-hook, ``compute_mask`` calls the functional
core (:mod:`funcprune.patterns`). Inside a ``PruningContainer`` (a second pruning of the same
tensor) they act on the survivors through the core's ``mask=`` argument instead of torch's
slicing, which would tear N:M groups and blocks apart.

Example:
  >>> import funcprune.compat as prune
  >>> m = nm_structured(torch.nn.Linear(8, 2), "weight", kept_per_group=2, group_size=4)
  >>> m.weight_mask.view(2, 2, 4).sum(-1)
  tensor([[2., 2.],
          [2., 2.]])
"""

from __future__ import annotations

import torch

from .. import patterns
from .._errors import shape_mismatch
from . import _module
from ._amounts import as_core_amount, validate_pruning_amount_init
from ._methods import BasePruningMethod, CustomFromMask, LnStructured, zero_pruned

__all__ = ["NMStructured", "BlockStructured", "nm_structured", "block_structured", "ln_structured_with_bias"]


class NMStructured(BasePruningMethod):
    """Keep the ``kept_per_group`` largest-magnitude entries of every ``group_size`` consecutive ones along ``dim``.

    Raises:
      TypeError: a count that is not an int. ValueError: counts no tensor can satisfy.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, kept_per_group: int, group_size: int, dim: int = -1) -> None:
        patterns.check_group_counts(kept_per_group, group_size)
        self.kept_per_group, self.group_size, self.dim = kept_per_group, group_size, dim

    def compute_mask(self, t, default_mask):
        return zero_pruned(default_mask, patterns.nm_structured(t, self.kept_per_group, self.group_size, self.dim))

    def _survivor_mask(self, t, default_mask):
        return patterns.nm_structured(t, self.kept_per_group, self.group_size, self.dim, mask=default_mask)

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, kept_per_group, group_size, dim=-1, importance_scores=None):  # type: ignore[override]
        return super().apply(
            module,
            name,
            kept_per_group=kept_per_group,
            group_size=group_size,
            dim=dim,
            importance_scores=importance_scores,
        )


class BlockStructured(BasePruningMethod):
    """Prune the ``amount`` blocks of ``block_shape`` with the smallest L``n`` norm."""

    PRUNING_TYPE = "unstructured"

    def __init__(self, amount, block_shape, n=1) -> None:
        validate_pruning_amount_init(amount)
        if isinstance(block_shape, int) or not all(isinstance(b, int) and b >= 1 for b in block_shape):
            raise TypeError(f"block_shape must be a sequence of positive ints, got {block_shape!r}")
        self.amount, self.block_shape, self.n = amount, tuple(block_shape), n

    def compute_mask(self, t, default_mask):
        keep = patterns.block_structured(t, as_core_amount(self.amount), self.block_shape, self.n)
        return zero_pruned(default_mask, keep)

    def _survivor_mask(self, t, default_mask):
        return patterns.block_structured(t, as_core_amount(self.amount), self.block_shape, self.n, mask=default_mask)

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, amount, block_shape, n=1, importance_scores=None):  # type: ignore[override]
        return super().apply(
            module, name, amount=amount, block_shape=block_shape, n=n, importance_scores=importance_scores
        )


_module.register_builtin_compute(NMStructured, BlockStructured)
_module.register_read_only_default(NMStructured, BlockStructured)


def nm_structured(module, name, kept_per_group, group_size, dim=-1, importance_scores=None):
    """Prune ``module.<name>`` to an N:M pattern (``kept_per_group`` kept in every ``group_size``) along ``dim``.

    Example:
      >>> m = nm_structured(torch.nn.Linear(4, 1), "weight", 1, 2)
      >>> int(m.weight_mask.sum())
      2
    """
    NMStructured.apply(module, name, kept_per_group, group_size, dim, importance_scores=importance_scores)
    return module


def block_structured(module, name, amount, block_shape, n=1, importance_scores=None):
    """Prune ``amount`` blocks of ``block_shape`` of ``module.<name>`` with the smallest L``n`` norm.

    Example:
      >>> m = block_structured(torch.nn.Linear(4, 4), "weight", 0.5, (2, 2))
      >>> int((m.weight_mask == 0).sum())
      8
    """
    BlockStructured.apply(module, name, amount, block_shape, n, importance_scores=importance_scores)
    return module


def ln_structured_with_bias(module, amount, n, name="weight", bias_name="bias", importance_scores=None):
    """``ln_structured`` on the output channels (dim 0) of ``module.<name>``, and the same channels of its bias.

    torch's ``ln_structured`` leaves the bias of a pruned output channel alone, so the channel
    still outputs its bias; here the bias gets a mask too, so the channel outputs zero. Without a
    ``bias_name`` parameter on the module only the weight is pruned.

    Example:
      >>> lin = ln_structured_with_bias(torch.nn.Linear(3, 4), amount=2, n=2)
      >>> lin.bias_mask.tolist() == (lin.weight_mask.sum(dim=1) > 0).float().tolist()
      True
    """
    bias = getattr(module, bias_name, None)
    weight = getattr(module, name)
    if isinstance(bias, torch.Tensor) and (weight.dim() < 1 or bias.shape != (weight.shape[0],)):
        channels = weight.shape[0] if weight.dim() else 0  # checked before any change
        raise shape_mismatch(
            bias_name, bias.shape, None, f"({channels},)", note=f": one entry per output channel of {name}"
        )
    LnStructured.apply(module, name, amount, n, 0, importance_scores=importance_scores)
    if isinstance(bias, torch.Tensor):
        kept = patterns.channels_kept(getattr(module, name + "_mask"), 0)
        CustomFromMask.apply(module, bias_name, kept.to(bias.dtype))
    return module
