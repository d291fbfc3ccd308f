"""Run an ``nn.Module`` on masked parameters through ``torch.func.functional_call``."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from . import _pytree
from .bridge import _reparametrized
from ._pytree import Tree
from .tree import _masked

__all__ = ["functional_call"]


def functional_call(module: torch.nn.Module, params: Tree, masks: Optional[Tree] = None, args: Any = (),
                    kwargs: Optional[Dict[str, Any]] = None) -> Any:
    """Call ``module`` with ``params`` (masked by ``masks``) in place of its own tensors.

    A pure function of ``params`` and ``masks``: the module is not changed, and ``grad``,
    ``vjp``, ``jacrev`` and ``vmap`` (over stacked params, stacked masks, or both) compose with it.
    Gradients reach the dense params and are zero at pruned entries, as ``weight_orig.grad`` is for
    a module pruned by ``torch.nn.utils.prune``.

    A module pruned by ``funcprune.compat`` or ``torch.nn.utils.prune`` takes the original names:
    ``params["fc1.weight"]`` replaces ``fc1.weight_orig`` and ``masks["fc1.weight"]`` replaces
    ``fc1.weight_mask`` (its own mask and values fill in whatever is not given); its stored pruned
    tensors are put back afterwards, so nothing computed inside (e.g. under ``vmap``) leaks out.

    Args:
      module: the model; its own parameters and buffers fill in any name ``params`` lacks.
      params: tree of tensors named like ``module.named_parameters()`` (buffers may be included).
      masks: masks over some of the names (bool or float); a masked name missing from ``params``
        masks the module's own tensor.
      args: positional input(s) of the forward (a single tensor or a tuple).
      kwargs: keyword inputs of the forward.

    Raises:
      KeyError: a mask name that is not a parameter or buffer of the module.

    Example:
      >>> lin = torch.nn.Linear(2, 1)
      >>> masks = {"weight": torch.zeros(1, 2, dtype=torch.bool)}
      >>> out = functional_call(lin, dict(lin.named_parameters()), masks, torch.ones(1, 2))
      >>> torch.allclose(out, lin.bias)
      True
    """
    named = _pytree.named_leaves(params)
    reparam = _reparametrized(module)
    named_masks = _pytree.named_leaves(masks) if masks is not None else {}
    unknown = [name for name in list(named_masks) + list(named)
               if name not in reparam and _own_tensor(module, name) is None]
    if unknown:
        known = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
        raise KeyError(f"name(s) {unknown} are not parameters or buffers of {type(module).__name__}; "
                       f"it has {known}")
    tensors = {_orig_name(name, reparam): value for name, value in named.items()}
    if len(tensors) != len(named):
        raise ValueError("params name a pruned tensor both by its original name and as '<name>_orig'")
    for name, mask in named_masks.items():
        if name in reparam:  # the module's own hook multiplies them, so the forward is unchanged
            target = _orig_name(name, reparam)
            value = tensors.get(target, _own_tensor(module, target))
            if mask.shape != value.shape:
                raise ValueError(f"{name}: mask has shape {tuple(mask.shape)} but the param has shape "
                                 f"{tuple(value.shape)}")
            tensors[target[:-len("_orig")] + "_mask"] = mask
            continue
        value = tensors.get(name, _own_tensor(module, name))
        if mask.shape != value.shape:
            raise ValueError(f"{name}: mask has shape {tuple(mask.shape)} but the param has shape {tuple(value.shape)}")
        tensors[name] = _masked(value, mask)
    if not reparam:
        return torch.func.functional_call(module, tensors, args, kwargs)
    # The pruning hooks store what they compute on the module; put the module's own values back.
    computed = [(sub, local, sub.__dict__.get(local)) for sub, local, _ in reparam.values()]
    try:
        return torch.func.functional_call(module, tensors, args, kwargs)
    finally:
        for sub, local, value in computed:
            if value is not None:
                setattr(sub, local, value)
            else:  # nothing was stored before: drop what the hook wrote (it may be a vmap-batched tensor)
                sub.__dict__.pop(local, None)


def _orig_name(name: str, reparam) -> str:
    """The module's own name for ``name``: ``<name>_orig`` for a pruned tensor."""
    return name + "_orig" if name in reparam else name


def _own_tensor(module: torch.nn.Module, name: str) -> Optional[torch.Tensor]:
    """The module's parameter or buffer called ``name``, or None (a lookup, not a walk of the tree)."""
    path, _, local = name.rpartition(".")
    try:
        sub = module.get_submodule(path)
    except AttributeError:
        return None
    found = sub._parameters.get(local)
    return found if found is not None else sub._buffers.get(local)
