"""Reading a module's layout: its tensors, the names of tied ones, and which a pruning hook reparametrizes.

Neutral ground below both the functional core (``call``) and the module-facing layers (``bridge``,
``compat``): it knows torch's hook protocol, not who installed the hook. Nothing here imports
``compat`` or ``bridge``.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

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


class Layout(NamedTuple):
    """Where a module keeps its tensors, read in one walk of its submodules."""

    tensors: Dict[str, torch.Tensor]  # every parameter and buffer, under each of its names
    pruned: Dict[str, Tuple[torch.nn.Module, str]]  # original name of a pruned tensor -> (submodule, local)
    tied: Dict[str, List[str]]  # name of a tensor the module holds under several names -> all its names


def layout(module: torch.nn.Module) -> Layout:
    """The :class:`Layout` of ``module`` (every name, ``remove_duplicate=False``)."""
    # One walk instead of a lookup per name plus torch.func.functional_call's own walk for tied
    # tensors: on ResNet-18 this is most of the call's Python overhead.
    names_of: Dict[int, List[str]]
    tensors, pruned, names_of = {}, {}, {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        for store in (sub._parameters, sub._buffers):
            for local, tensor in store.items():
                if tensor is not None:
                    tensors[dot + local] = tensor
                    names_of.setdefault(id(tensor), []).append(dot + local)
        for local in pruned_locals(sub):
            pruned[dot + local] = (sub, local)
    tied = {name: names for names in names_of.values() if len(names) > 1 for name in names}
    return Layout(tensors, pruned, tied)
