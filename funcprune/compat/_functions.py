"""The module-level functions of ``torch.nn.utils.prune``: prune a module in place and return it."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import cast

import torch

from .. import _radix, select, tree
from .._amount import is_concrete
from . import _module
from ._amounts import as_core_amount, check_not_bool, prune_count
from ._methods import (
    CustomFromMask,
    Identity,
    L1Unstructured,
    LnStructured,
    PruningContainer,
    RandomStructured,
    RandomUnstructured,
    current_tie_order,
)
from ._ties import torch_order_select

__all__ = [
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "global_unstructured",
    "custom_from_mask",
    "remove",
    "is_pruned",
]


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

    L1 (:class:`L1Unstructured`) first finds the global cut with the core's chunked radix
    selection (no concatenated copy of the weights). If the cut is unique (no score equal to
    the last pruned one is kept), that is torch's mask and the masks are built from it: a
    fraction of torch's time and memory. If a tie straddles the cut, which of the equal scores
    go is up to torch's top-k over the concatenated survivors (see :func:`tie_order`); compat
    then builds that vector (the radix pass holds nothing by then) and runs the same top-k,
    skipping torch's float mask vectors and its sort of the result, so it stays within torch's
    own time and memory. Inside ``with tie_order("index")`` such ties go to the lowest global
    index instead and the lean path is taken every time. Other methods (random, custom) slice
    the concatenated survivors as torch does. All masks are computed before any module is
    changed, and a failure undoes the pairs already pruned.

    Raises:
      TypeError: if ``parameters`` is not iterable, ``importance_scores`` not a dict, the
        method's ``PRUNING_TYPE`` is not ``'unstructured'``, or ``amount=True`` (as torch).
      ValueError: if ``amount`` exceeds the surviving entries.

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
    for module, name in parameters:
        _module.check_not_sharded(module, name)
    scores = [importance_scores.get((module, name), getattr(module, name)) for module, name in parameters]
    method = pruning_method(**kwargs)
    method._tensor_name = "temp"
    if method.PRUNING_TYPE != "unstructured":
        raise TypeError(
            'Only "unstructured" PRUNING_TYPE supported for the `pruning_method`. '
            f"Found method {pruning_method} of type {method.PRUNING_TYPE}"
        )
    if _module.is_builtin_compute(method) and isinstance(method, L1Unstructured):
        masks = _global_l1(parameters, scores, method.amount)
    else:
        masks = _sliced_global(parameters, scores, method)
    with _module.LOCK:
        rollbacks = [_module.Rollback(module, name) for module, name in parameters]
    done = []
    try:
        for (module, name), mask, rollback in zip(parameters, masks, rollbacks):
            custom_from_mask(module, name, mask=mask)
            done.append(rollback)
    except BaseException:
        with _module.LOCK:
            for rollback in reversed(done):
                rollback.restore()
        raise


def _global_l1(parameters, scores, amount) -> list:
    """The per-pair masks torch's global L1 gives to ``custom_from_mask`` (see :func:`global_unstructured`).

    Returned in each pair's mask dtype: its old mask with the newly pruned entries set to 0 (a
    bool keep mask for a pair pruned for the first time).
    """
    old = [getattr(module, name + "_mask", None) for module, name in parameters]
    alive = [None if o is None else o == 1 for o in old]  # torch's candidates: mask entries equal to 1
    scores = [s.detach() for s in scores]
    dtype = functools.reduce(torch.promote_types, [s.dtype for s in scores])  # torch.cat's dtype
    if not all(is_concrete(t) for t in scores + [a for a in alive if a is not None]):
        keeps = tree.global_unstructured(scores, as_core_amount(amount), masks=alive, method="l1")
        return [k if o is None else o * k for k, o in zip(keeps, old)]  # meta: shapes only
    # every mask is concrete from here on, so count_kept gives ints
    size = sum(s.numel() if a is None else cast(int, select.count_kept(a)) for s, a in zip(scores, alive))
    k = prune_count(amount, size)
    check_not_bool(amount, k)
    if k == 0:
        keeps = [torch.ones_like(s, dtype=torch.bool) if a is None else a for s, a in zip(scores, alive)]
    elif dtype.is_floating_point:
        key_fn = lambda piece: piece.abs().to(dtype)  # noqa: E731
        cut = _radix.radix_cut(scores, alive, k, key_fn=key_fn)
        if current_tie_order() == "index" or not cut.straddles:
            keeps = _radix.keep_from_cut(scores, alive, cut, key_fn=key_fn)
        else:
            del cut
            keeps = _torch_order_global(scores, alive, k, dtype)
    else:
        keeps = _torch_order_global(scores, alive, k, dtype)
    return [keep if o is None else o.masked_fill(~keep & a, 0) for keep, o, a in zip(keeps, old, alive)]


def _torch_order_global(scores, alive, k: int, dtype) -> list:
    """torch's choice: one top-k over ``|scores|`` of the candidates, concatenated in pair order."""
    # concrete masks (see _global_l1): count_kept gives ints
    sizes = [s.numel() if a is None else cast(int, select.count_kept(a)) for s, a in zip(scores, alive)]
    flat = torch.empty(sum(sizes), dtype=dtype, device=scores[0].device)
    for piece, s, a in zip(flat.split(sizes), scores, alive):
        values = s.reshape(-1) if a is None else s.reshape(-1)[a.reshape(-1)]
        torch.abs(values.to(dtype), out=piece)
        del values
    dropped = torch_order_select(flat, k, largest=False, unique_first=False)
    del flat
    keeps = []
    for piece, s, a in zip(dropped.split(sizes), scores, alive):
        if a is None:
            keeps.append(piece.logical_not().view(s.shape))
        else:
            keeps.append(torch.zeros_like(a).masked_scatter_(a, piece.logical_not()))
    return keeps


def _sliced_global(parameters, scores, method) -> list:
    """torch's way: one container over the concatenated scores and masks, sliced per parameter."""
    flat_scores = torch.nn.utils.parameters_to_vector(scores)
    flat_mask = torch.nn.utils.parameters_to_vector(
        [
            getattr(module, name + "_mask")
            if hasattr(module, name + "_mask")
            else torch.ones_like(getattr(module, name))
            for module, name in parameters
        ]
    )
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
    with _module.LOCK:
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
    return any(
        _module.is_pruning_hook(hook) for sub in module.modules() for hook in list(sub._forward_pre_hooks.values())
    )  # a snapshot: another thread may prune
