"""funcprune: neural-network pruning for PyTorch as pure functions on ``torch.func``.

Masks are bool tensors (``True`` = kept). Tensor-level functions map ``(scores, mask)`` to a new
mask; tree-level functions map ``(params, masks)`` pytrees to new pytrees; models run through
:func:`functional_call`. ``funcprune.compat`` is a drop-in for ``torch.nn.utils.prune``.
"""

from .call import functional_call
from .methods import (
    custom_from_mask,
    identity,
    l1_unstructured,
    ln_structured,
    random_structured,
    random_unstructured,
)
from .tree import Sparsity, apply_masks, global_unstructured, mask_grads, prune, sparsity

__version__ = "0.1.0"

__all__ = [
    "Sparsity",
    "apply_masks",
    "custom_from_mask",
    "functional_call",
    "global_unstructured",
    "identity",
    "l1_unstructured",
    "ln_structured",
    "mask_grads",
    "prune",
    "random_structured",
    "random_unstructured",
    "sparsity",
]

# --- compat bridge (module <-> params, masks) ---
from .bridge import from_module, to_module  # noqa: E402

__all__ += ["from_module", "to_module"]

# --- multi-mask experiments and functional training ---
from .multi import call_with_buffers, stacked_call, vmap_stacked  # noqa: E402
from .stack import masks_for_amounts, masks_for_scores, masks_for_seeds, stack, stack_size, unstack  # noqa: E402
from .train import lottery_round, masked_update  # noqa: E402

__all__ += ["call_with_buffers", "lottery_round", "masked_update", "masks_for_amounts", "masks_for_scores",
            "masks_for_seeds", "stack", "stack_size", "stacked_call", "unstack", "vmap_stacked"]

# --- beyond torch.nn.utils.prune: patterns, distributions, schedules, saliency, export ---
from . import distributions, dst, export, patterns, saliency, schedules  # noqa: E402
from .distributions import erk, prune_by, to_counts, uniform  # noqa: E402
from .dst import drop_and_grow, rigl_update, set_update, zero_grown  # noqa: E402
from .export import finalize, load_masks, save_masks, size_report, to_sparse, verify  # noqa: E402
from .patterns import block_structured, channels_kept, nm_structured, prune_channels, satisfies_nm  # noqa: E402

__all__ += ["distributions", "dst", "export", "patterns", "saliency", "schedules", "erk", "prune_by", "to_counts",
            "uniform", "drop_and_grow", "rigl_update", "set_update", "zero_grown", "finalize", "load_masks",
            "save_masks", "size_report", "to_sparse", "verify", "block_structured", "channels_kept",
            "nm_structured", "prune_channels", "satisfies_nm"]
