"""Convert between a pruned ``nn.Module`` and funcprune's ``(params, masks)`` pytrees, both ways.

A module pruned by ``funcprune.compat`` or by ``torch.nn.utils.prune`` carries, for each pruned
tensor ``name``, a parameter ``name_orig``, a buffer ``name_mask`` and a forward pre-hook. Here
the trees are keyed by the *original* names (``"fc1.weight"``), as the functional API expects.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from . import _pytree
from ._amount import _is_concrete
from ._errors import shape_mismatch
from ._layout import reparametrized
from ._pytree import Tree

__all__ = ["from_module", "to_module"]


def _original_names(module: torch.nn.Module, reparam) -> Dict[str, str]:
    """``{qualified parameter name in the module: original name}`` (``x.weight_orig`` -> ``x.weight``)."""
    orig_of = {(f"{p}." if p else "") + local + "_orig": name for name, (_, local, p) in reparam.items()}
    return {qname: orig_of.get(qname, qname) for qname, _ in module.named_parameters()}


def from_module(module: torch.nn.Module) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Read a (possibly pruned) module into ``(params, masks)`` keyed by the original names.

    ``params[name]`` is the module's own parameter (for a pruned tensor the ``_orig`` Parameter);
    ``masks[name]`` is a new bool mask, present only for pruned tensors.

    Example:
      >>> import funcprune.compat as prune
      >>> m = prune.l1_unstructured(torch.nn.Linear(3, 2), "weight", amount=2)
      >>> params, masks = from_module(m)
      >>> sorted(params), list(masks), masks["weight"].dtype, params["weight"] is m.weight_orig
      (['bias', 'weight'], ['weight'], torch.bool, True)
    """
    reparam = reparametrized(module)
    params: Dict[str, torch.Tensor] = {orig: p for (qname, orig), (_, p) in zip(
        _original_names(module, reparam).items(), module.named_parameters())}
    masks: Dict[str, torch.Tensor] = {}
    for name in params:
        if name in reparam:
            sub, local, _ = reparam[name]
            masks[name] = getattr(sub, local + "_mask").detach() != 0
    return params, masks


def to_module(module: torch.nn.Module, params: Optional[Tree] = None, masks: Optional[Tree] = None) -> torch.nn.Module:
    """Give ``module`` the values of ``params`` and exactly torch's pruned layout for ``masks``.

    Masked names get (or keep) ``<name>_orig``/``<name>_mask``/hook as ``torch.nn.utils.prune``
    would create them, pruned in ``named_parameters()`` order, so ``state_dict`` keys (and their
    order) match a model pruned that way; unmasked names become plain parameters again (their
    mask is dropped, not applied). Values are copied into the existing Parameters (ids are kept).
    Everything is validated before the module is changed.

    Args:
      module: the model, pruned or not; changed in place and returned.
      params: tensors by original name (a subset is fine); None leaves the values as they are.
      masks: masks by original name (bool or float); names not in it end up unpruned.

    Raises:
      KeyError: a name that is not a parameter of ``module``.
      TypeError: a value or mask that is not a tensor (naming the leaf).
      ValueError: a tensor whose shape differs from the parameter's, or one that is not a real
        tensor (meta, vmap-batched).

    Example:
      >>> m = to_module(torch.nn.Linear(3, 2), masks={"weight": torch.eye(2, 3, dtype=torch.bool)})
      >>> list(m.state_dict()), m.weight_mask.dtype
      (['bias', 'weight_orig', 'weight_mask'], torch.float32)
    """
    # compat imports the core (and ``import funcprune`` must not load compat): import it when needed.
    from .compat import _module, custom_from_mask

    current, _ = from_module(module)
    named_params = _pytree.lookup(current, params, "params")
    named_masks = _pytree.lookup(current, masks, "masks")
    for what, named in (("param", named_params), ("mask", named_masks)):
        for name, value in named.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}: {what} must be a tensor, got {type(value).__name__}")
            if not _is_concrete(value):  # copied into the module below: checked before anything changes
                raise ValueError(f"{name}: {what} must be a real tensor (not meta or vmap-batched)")
            if tuple(value.shape) != tuple(current[name].shape):
                raise shape_mismatch(what, value.shape, "the parameter", current[name].shape, name=name)
    reparam = reparametrized(module)
    subs = dict(module.named_modules())
    with torch.no_grad():
        for name, value in named_params.items():
            current[name].copy_(value)
    for name in current:
        prefix, _, local = name.rpartition(".")
        sub = subs[prefix]
        if name in named_masks:
            mask = named_masks[name]
            if name in reparam:
                _, hook = _module.pruning_hook(sub, local)
                with torch.no_grad():
                    getattr(sub, local + "_mask").copy_(mask)
                setattr(sub, local, hook.apply_mask(sub))
            else:
                custom_from_mask(sub, local, mask=mask.to(current[name].device))
        elif name in reparam:
            _module.unprune(sub, local)
    return module

