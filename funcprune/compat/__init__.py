"""Drop-in ``torch.nn.utils.prune``: ``import funcprune.compat as prune``.

Same classes, functions, module layout (``<name>_orig`` parameter, ``<name>_mask`` buffer in the
parameter's dtype, the method object as forward pre-hook) and the same masks for the same seed;
the masks come from funcprune's functional core. Where torch is broken it does better:
``copy.deepcopy`` of a pruned module works, a failing pruning call leaves the module untouched
(parameter order included; only what that call changed is undone, so another thread's pruning
of another tensor stays), threads pruning different tensors of one module at once all land,
and ``CustomFromMask`` hooks keep no second copy of the mask.

Same entries, not just the same counts. torch's CPU top-k chooses among equal scores with
``std::nth_element`` over the whole vector it is given, an order only that same call on that
same vector reproduces. compat follows it by default (:func:`tie_order` ``"torch"``), and pays
for it only where it matters: ``global_unstructured`` with L1 finds the cut with the core's
chunked radix selection (no concatenated copy: a fraction of torch's time and memory) and
runs torch's concatenated top-k only when a tie straddles the cut, within torch's own time and
memory. ``with tie_order("index"):`` switches to the core's device-independent rule (ties go to
the lowest global index; the lean path always), for big models where the exact torch entries
among equal magnitudes do not matter but memory does.

The module keeps its class: ``type(m) is nn.Linear`` holds after pruning (torch.ao's
``make_config_from_model`` and other exact-type checks see the layer). ``deepcopy``/``pickle``
support comes from an instance-level ``__reduce_ex__`` (looked up on the instance by ``copy`` and
``pickle``), present while the module is pruned; ``state_dict`` is torch's, key for key.

Example:
  >>> import funcprune.compat as prune
  >>> m = prune.l1_unstructured(torch.nn.Linear(4, 2), "weight", amount=0.5)
  >>> [n for n, _ in m.named_parameters()], [n for n, _ in m.named_buffers()]
  (['bias', 'weight_orig'], ['weight_mask'])
  >>> int(m.weight_mask.sum()), prune.is_pruned(m)
  (4, True)
"""

import torch  # noqa: F401  (doctest namespace)

from ._amounts import compute_norm as _compute_norm

# torch.nn.utils.prune's module-level helpers under torch's own names (torch's tests call them)
from ._amounts import compute_nparams_toprune as _compute_nparams_toprune
from ._amounts import validate_pruning_amount as _validate_pruning_amount
from ._amounts import validate_pruning_amount_init as _validate_pruning_amount_init
from ._amounts import validate_pruning_dim as _validate_pruning_dim
from ._amounts import validate_structured_pruning as _validate_structured_pruning
from ._functions import (
    custom_from_mask,
    global_unstructured,
    identity,
    is_pruned,
    l1_unstructured,
    ln_structured,
    random_structured,
    random_unstructured,
    remove,
)
from ._methods import (
    BasePruningMethod,
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    PruningContainer,
    RandomStructured,
    RandomUnstructured,
    current_tie_order,
    tie_order,
)

__all__ = [
    "BasePruningMethod",
    "PruningContainer",
    "Identity",
    "RandomUnstructured",
    "L1Unstructured",
    "RandomStructured",
    "LnStructured",
    "CustomFromMask",
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "global_unstructured",
    "custom_from_mask",
    "remove",
    "is_pruned",
    "tie_order",
    "current_tie_order",
]

# Methods beyond torch.nn.utils.prune (N:M, blocks, channels with their bias), same module protocol.
from ._beyond import BlockStructured, NMStructured, block_structured, ln_structured_with_bias, nm_structured

__all__ += ["NMStructured", "BlockStructured", "nm_structured", "block_structured", "ln_structured_with_bias"]
