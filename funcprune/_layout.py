"""Reading a module's layout: which of its tensors a pruning hook reparametrizes.

Neutral ground below both the functional core (``call``) and the module-facing layers (``bridge``,
``compat``): it knows torch's hook protocol, not who installed the hook.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.utils.prune as _torch_prune


def reparametrized(module: torch.nn.Module) -> Dict[str, Tuple[torch.nn.Module, str, str]]:
    """``{qualified original name: (submodule, local name, prefix)}`` of every pruned tensor."""
    found = {}
    for prefix, sub in module.named_modules():
        for name in pruned_locals(sub):
            found[f"{prefix}.{name}" if prefix else name] = (sub, name, prefix)
    return found


def pruned_locals(sub: torch.nn.Module):
    """Local names of ``sub``'s tensors reparametrized by a pruning hook (compat's or torch's)."""
    for hook in sub._forward_pre_hooks.values():
        if isinstance(hook, _torch_prune.BasePruningMethod):
            name = getattr(hook, "_tensor_name", None)
            if name is not None:
                yield name
