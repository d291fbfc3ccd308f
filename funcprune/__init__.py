"""funcprune: neural-network pruning for PyTorch as pure functions on ``torch.func``.

Masks are bool tensors (``True`` = kept). Tensor-level functions map ``(scores, *, mask)`` to a
new mask; tree-level functions map ``(params, masks)`` pytrees to new pytrees; models run through
:func:`functional_call`.

What is where: torch.nn.utils.prune's API and the functional core are flat at the top level
(``fp.l1_unstructured``, ``fp.prune``, ``fp.functional_call``, ``fp.stack``, ...); the extras
are reached through their submodules (``fp.patterns.nm_structured``, ``fp.distributions.erk``,
``fp.schedules.polynomial``, ``fp.saliency``, ``fp.dst.rigl_update``, ``fp.export.save_masks``,
``fp.distributed.keep_pruned``, ``fp.structural.shrink``, ``fp.oneshot.prune``).
``funcprune.compat``, the drop-in for ``torch.nn.utils.prune``, is imported on its own
(``import funcprune.compat as prune``); ``import funcprune`` does not load it.
"""

from . import distributed, distributions, dst, export, oneshot, patterns, saliency, schedules, structural
from .bridge import from_module, to_module
from .call import functional_call
from .methods import (
    custom_from_mask,
    identity,
    l1_unstructured,
    ln_structured,
    random_structured,
    random_unstructured,
)
from .multi import call_with_buffers, stacked_call, vmap_stacked
from .stacking import masks_for_amounts, masks_for_scores, masks_for_seeds, stack, stack_size, unstack
from .train import lottery_round, masked_update
from .tree import Sparsity, apply_masks, global_unstructured, mask_grads, prune, sparsity

__version__ = "1.1.0"

__all__ = [
    # torch.nn.utils.prune's methods, as functions of tensors
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "custom_from_mask",
    # over pytrees of params and masks
    "global_unstructured",
    "prune",
    "apply_masks",
    "mask_grads",
    "sparsity",
    "Sparsity",
    # running modules
    "functional_call",
    "from_module",
    "to_module",
    # many masks at once
    "stack",
    "unstack",
    "stack_size",
    "masks_for_amounts",
    "masks_for_seeds",
    "masks_for_scores",
    "stacked_call",
    "vmap_stacked",
    "call_with_buffers",
    # functional training
    "masked_update",
    "lottery_round",
    # extras, as submodules
    "patterns",
    "distributions",
    "schedules",
    "saliency",
    "dst",
    "export",
    "distributed",
    "structural",
    "oneshot",
]
