"""Convert between a pruned ``nn.Module`` and funcprune's ``(params, masks)`` pytrees, both ways.

A module pruned by ``funcprune.compat`` or by ``torch.nn.utils.prune`` carries, for each pruned
tensor ``name``, a parameter ``name_orig``, a buffer ``name_mask`` and a forward pre-hook. Here
the trees are keyed by the *original* names (``"fc1.weight"``), as the functional API expects.
"""

from __future__ import annotations

import torch
import torch.nn.utils.prune as _torch_prune

from . import _pytree
from ._amount import is_concrete
from ._dtensor import is_dtensor
from ._layout import LOCK, install, pruning_hook, reparametrized, unprune
from ._pytree import Tree

__all__ = ["from_module", "to_module"]


def _original_names(module: torch.nn.Module, reparam) -> dict[str, str]:
    """``{qualified parameter name in the module: original name}`` (``x.weight_orig`` -> ``x.weight``)."""
    orig_of = {(f"{p}." if p else "") + local + "_orig": name for name, (_, local, p) in reparam.items()}
    return {qname: orig_of.get(qname, qname) for qname, _ in module.named_parameters()}


def from_module(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
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
    params: dict[str, torch.Tensor] = {
        orig: p for (qname, orig), (_, p) in zip(_original_names(module, reparam).items(), module.named_parameters())
    }
    masks: dict[str, torch.Tensor] = {}
    for name in params:
        if name in reparam:
            sub, local, _ = reparam[name]
            masks[name] = getattr(sub, local + "_mask").detach() != 0
    return params, masks


def to_module(module: torch.nn.Module, params: Tree | None = None, masks: Tree | None = None) -> torch.nn.Module:
    """Give ``module`` the values of ``params`` and exactly torch's pruned layout for ``masks``.

    Masked names get (or keep) ``<name>_orig``/``<name>_mask``/hook as
    ``torch.nn.utils.prune.custom_from_mask`` would create them (the hook is torch's
    ``CustomFromMask``; the mask buffer is in the parameter's dtype), pruned in
    ``named_parameters()`` order, so ``state_dict`` keys (and their order) match a model pruned
    that way; unmasked names become plain parameters again (their mask is dropped, not
    applied). The module keeps its class and can be deep-copied and pickled, as with
    ``funcprune.compat``. Values are copied into the existing Parameters (ids are kept).
    Everything is validated before the module is changed.

    Args:
      module: the model, pruned or not; changed in place and returned.
      params: tensors by original name (a subset is fine); None leaves the values as they are.
      masks: masks by original name (bool or float); names not in it end up unpruned.

    Raises:
      KeyError: a name that is not a parameter of ``module``.
      TypeError: a value or mask that is not a tensor, or a mask for a DTensor parameter (naming the leaf).
      ValueError: a tensor whose shape differs from the parameter's, or one that is not a real
        tensor (meta, vmap-batched).

    Example:
      >>> m = to_module(torch.nn.Linear(3, 2), masks={"weight": torch.eye(2, 3, dtype=torch.bool)})
      >>> list(m.state_dict()), m.weight_mask.dtype
      (['bias', 'weight_orig', 'weight_mask'], torch.float32)
    """
    current, _ = from_module(module)
    named_params = _pytree.lookup(current, params, "params")
    named_masks = _pytree.lookup(current, masks, "masks")
    for what, named in (("param", named_params), ("mask", named_masks)):
        for name, value in named.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name}: {what} must be a tensor, got {type(value).__name__}")
            if not is_concrete(value):  # copied into the module below: checked before anything changes
                raise ValueError(f"{name}: {what} must be a real tensor (not meta or vmap-batched)")
            if tuple(value.shape) != tuple(current[name].shape):
                raise ValueError(
                    f"{name}: {what} has shape {tuple(value.shape)} but the parameter has shape "
                    f"{tuple(current[name].shape)}"
                )
            if what == "mask" and is_dtensor(current[name]):
                raise TypeError(
                    f"{name}: the parameter is a DTensor (sharded by FSDP2's fully_shard or tensor "
                    "parallelism), and torch's full-size <name>_mask buffer and forward pre-hook do not "
                    "fit it: keep the masks as a tree and train with funcprune.distributed.keep_pruned"
                )
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
                with LOCK:
                    _, hook = pruning_hook(sub, local)
                    with torch.no_grad():
                        getattr(sub, local + "_mask").copy_(mask)
                    setattr(sub, local, hook.apply_mask(sub))
            else:
                _prune_from_mask(sub, local, mask)
        elif name in reparam:
            unprune(sub, local)
    return module


def _prune_from_mask(sub: torch.nn.Module, local: str, mask: torch.Tensor) -> None:
    """``torch.nn.utils.prune.custom_from_mask(sub, local, mask)``'s layout, without its second copy of the mask."""
    param = sub._parameters[local]
    assert param is not None  # from_module named it: a parameter that is set
    buffer = mask.to(device=param.device, dtype=param.dtype, copy=True)  # torch's mask: 1/0 in the param's dtype
    hook = _torch_prune.CustomFromMask(buffer)  # the hook's mask is the buffer itself
    hook._tensor_name = local
    install(sub, local, hook, buffer, orig=param)
