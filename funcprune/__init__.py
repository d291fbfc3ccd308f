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

# --- multi-mask experiments and functional training ---

# --- beyond torch.nn.utils.prune: patterns, distributions, schedules, saliency, export ---
