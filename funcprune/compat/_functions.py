"""The module-level functions of ``torch.nn.utils.prune``: prune a module in place and return it."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .. import tree
from . import _module
from ._amounts import _as_core_amount
from ._methods import (CustomFromMask, boundary_tie, Identity, L1Unstructured, LnStructured, PruningContainer,
                       RandomStructured, RandomUnstructured)

__all__ = ["identity", "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "global_unstructured", "custom_from_mask", "remove", "is_pruned"]


def identity(module, name):
    """Add the pruning reparametrization to ``module.<name>`` with a mask of ones.

    Example:
      >>> identity(torch.nn.Linear(2, 3), "bias").bias_mask
      tensor([1., 1., 1.])
    """
    Identity.apply(module, name)
    return module


def random_unstructured(module, name, amount):
    """Prune ``amount`` random unpruned entries of ``module.<name>`` (int count or float fraction).

    Example:
      >>> m = random_unstructured(torch.nn.Linear(2, 3), "weight", amount=1)
      >>> int((m.weight_mask == 0).sum())
      1
    """
    RandomUnstructured.apply(module, name, amount)
    return module


def l1_unstructured(module, name, amount, importance_scores=None):
    """Prune the ``amount`` unpruned entries of ``module.<name>`` of smallest absolute value.

    Example:
      >>> list(l1_unstructured(torch.nn.Linear(2, 3), "weight", amount=0.2).state_dict())
      ['bias', 'weight_orig', 'weight_mask']
    """
    L1Unstructured.apply(module, name, amount=amount, importance_scores=importance_scores)
    return module


def random_structured(module, name, amount, dim):
    """Prune ``amount`` random unpruned channels of ``module.<name>`` along ``dim``.

    Example:
      >>> m = random_structured(torch.nn.Linear(5, 3), "weight", amount=3, dim=1)
      >>> int((m.weight.sum(dim=0) == 0).sum())
      3
    """
    RandomStructured.apply(module, name, amount, dim)
    return module


def ln_structured(module, name, amount, n, dim, importance_scores=None):
    """Prune the ``amount`` unpruned channels of ``module.<name>`` along ``dim`` of smallest L``n`` norm.

    Example:
      >>> m = ln_structured(torch.nn.Conv2d(5, 3, 2), "weight", amount=0.3, dim=1, n=float("-inf"))
      >>> int((m.weight_mask.sum(dim=(0, 2, 3)) == 0).sum())
      2
    """
    LnStructured.apply(module, name, amount, n, dim, importance_scores=importance_scores)
    return module


def custom_from_mask(module, name, mask):
    """Prune ``module.<name>`` where ``mask`` is zero.

    Example:
      >>> custom_from_mask(torch.nn.Linear(5, 3), name="bias", mask=torch.tensor([0, 1, 0])).bias_mask
      tensor([0., 1., 0.])
    """
    CustomFromMask.apply(module, name, mask)
    return module


def global_unstructured(parameters, pruning_method, importance_scores=None, **kwargs) -> None:
    """Prune ``(module, name)`` pairs together, as if they were one tensor, with an unstructured method.

    L1 (:class:`L1Unstructured`) runs the core's chunked radix selection: no concatenated copy of
    the weights and no float mask vector kept alive by the hooks. Other methods (random, custom)
    slice the concatenated survivors as torch does. All masks are computed before any module is
    changed, and a failure undoes the pairs already pruned.

    Raises:
      TypeError: if ``parameters`` is not iterable, ``importance_scores`` not a dict, or the
        method's ``PRUNING_TYPE`` is not ``'unstructured'``.

    Example:
      >>> net = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Linear(4, 1))
      >>> global_unstructured([(net[0], "weight"), (net[1], "weight")], L1Unstructured, amount=10)
      >>> int((net[0].weight_mask == 0).sum() + (net[1].weight_mask == 0).sum())
      10
    """
    if not isinstance(parameters, Iterable):
        raise TypeError("global_unstructured(): parameters is not an Iterable")
    parameters = list(parameters)
    importance_scores = importance_scores if importance_scores is not None else {}
    if not isinstance(importance_scores, dict):
        raise TypeError("global_unstructured(): importance_scores must be of type dict")
    scores = [importance_scores.get((module, name), getattr(module, name)) for module, name in parameters]
    method = pruning_method(**kwargs)
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError('Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
                        f"Found method {pruning_method} of type {method.PRUNING_TYPE}")
    if _module.is_builtin_compute(method) and isinstance(method, L1Unstructured):
        old = [getattr(module, name + "_mask", None) for module, name in parameters]
        masks = tree.global_unstructured(scores, _as_core_amount(method.amount), masks=old, method="l1")
        alive = [torch.ones_like(m) if o is None else o != 0 for m, o in zip(masks, old)]
        if boundary_tie([s.detach().abs() for s in scores], [a & ~m for a, m in zip(alive, masks)], masks):
            masks = _sliced_global(parameters, scores, method)  # torch's tie order
    else:
        masks = _sliced_global(parameters, scores, method)
    snapshots = {id(module): _module._Snapshot(module) for module, _ in parameters}
    try:
        for (module, name), mask in zip(parameters, masks):
            custom_from_mask(module, name, mask=mask)
    except BaseException:
        for snapshot in snapshots.values():
            snapshot.restore()
        raise


def _sliced_global(parameters, scores, method) -> list:
    """torch's way: one container over the concatenated scores and masks, sliced per parameter."""
    flat_scores = torch.nn.utils.parameters_to_vector(scores)
    flat_mask = torch.nn.utils.parameters_to_vector(
        [getattr(module, name + "_mask", None) if hasattr(module, name + "_mask") else
         torch.ones_like(getattr(module, name)) for module, name in parameters])
    container = PruningContainer()
    container._tensor_name = "temp"
    container.add_pruning_method(method)
    final = container.compute_mask(flat_scores, flat_mask)
    sizes = [getattr(module, name).numel() for module, name in parameters]
    return [piece.view_as(getattr(module, name)) for piece, (module, name) in zip(final.split(sizes), parameters)]


def remove(module, name):
    """Make the pruning of ``module.<name>`` permanent and drop ``_orig``, ``_mask`` and the hook.

    Raises:
      ValueError: if ``module.<name>`` is not pruned.

    Example:
      >>> m = remove(random_unstructured(torch.nn.Linear(5, 7), name="weight", amount=0.2), name="weight")
      >>> [n for n, _ in m.named_parameters()]
      ['bias', 'weight']
    """
    key, hook = _module.pruning_hook(module, name)
    if hook is None:
        raise ValueError(f"Parameter '{name}' of module {module} has to be pruned before pruning can be removed")
    hook.remove(module)
    del module._forward_pre_hooks[key]
    _module.unmark_if_unpruned(module)
    return module


def is_pruned(module) -> bool:
    """True if ``module`` or any submodule carries a pruning hook (compat's or torch's).

    Example:
      >>> m = torch.nn.Sequential(torch.nn.Linear(5, 7))
      >>> is_pruned(m), is_pruned(random_unstructured(m[0], "weight", 0.2))
      (False, True)
    """
    return any(_module.is_pruning_hook(hook) for sub in module.modules() for hook in sub._forward_pre_hooks.values())

