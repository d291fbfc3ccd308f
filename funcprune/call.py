"""Run an ``nn.Module`` on masked parameters through ``torch.func.functional_call``."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

import torch

from . import _pytree
from ._amount import is_concrete
from ._errors import shape_mismatch, unknown_names
from ._layout import Layout
from ._layout import layout as _layout
from ._masking import masked
from ._pytree import Tree

__all__ = ["functional_call"]


def functional_call(
    module: torch.nn.Module,
    params: Tree,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    masks: Tree | None = None,
    strict: bool = False,
) -> Any:
    """Call ``module`` with ``params`` (masked by ``masks``) in place of its own tensors.

    A function of ``params`` and ``masks`` that leaves the module's tensors as they were (but see
    buffers below), and ``grad``, ``vjp``, ``jacrev`` and ``vmap`` (over stacked params, stacked
    masks, or both) compose with it. Gradients reach the dense params and are zero at pruned
    entries, as ``weight_orig.grad`` is for a module pruned by ``torch.nn.utils.prune``.

    Buffers a forward updates in place (BatchNorm's running statistics in train mode) are updated
    where they live during the call: in the tensors given in ``params`` if they are given there,
    else in the module's own buffers, exactly as in ``torch.func.functional_call``. To get the
    updated statistics back without touching either, use :func:`funcprune.call_with_buffers`; in
    eval mode nothing is updated.

    Threads: calls on one module are serialized by a reentrant lock held for the whole call
    (reading the module, swapping the given tensors in, the forward, putting its own back), so
    concurrent calls from several threads each get the output of their own ``params`` and
    ``masks``, and the module ends with its own tensors; a forward that calls ``functional_call``
    on the same module again (same thread) works. Calls on different module objects run
    concurrently and are not serialized against each other, even when one is a submodule of the
    other; nor are plain ``module(x)`` calls or other code that changes the module meanwhile.

    Tied tensors (one tensor under several names, e.g. shared embeddings): one name is enough in
    ``params`` or ``masks``; several names must carry one value: the same tensor, views of one
    storage (``named_parameters(remove_duplicate=False)`` plus ``detach()``), or, for real
    tensors, equal values (e.g. equal masks from :func:`funcprune.prune`), checked in that order.

    A module pruned by ``funcprune.compat`` or ``torch.nn.utils.prune`` takes the original names:
    ``params["fc1.weight"]`` replaces ``fc1.weight_orig`` and ``masks["fc1.weight"]`` replaces
    ``fc1.weight_mask`` (its own mask and values fill in whatever is not given); its stored pruned
    tensors are put back afterwards, so nothing computed inside (e.g. under ``vmap``) leaks out.

    The arguments are ``torch.func.functional_call``'s, in its order, plus the keyword-only ``masks``:
    ``functional_call(module, params, (x,))`` runs ``module(x)`` on ``params`` unmasked.

    Args:
      module: the model; its own parameters and buffers fill in any name ``params`` lacks.
      params: tree of tensors named like ``module.named_parameters()`` (buffers may be included).
      args: positional input(s) of the forward (a single tensor or a tuple).
      kwargs: keyword inputs of the forward.
      masks: masks over some of the names (bool or float); a masked name missing from ``params``
        masks the module's own tensor.
      strict: as ``torch.func.functional_call``'s ``strict``: every parameter and buffer of the
        module must be given in ``params`` (one name of a tied tensor is enough; a pruned tensor is
        given by its original name, and its mask buffer needs no entry).

    Raises:
      TypeError: ``module`` is (or contains) an FSDP2 module (``fully_shard``): its pre-forward
        all-gather would silently replace what is swapped in (see :mod:`funcprune.distributed`);
        or ``module`` is a ``DistributedDataParallel`` and, with grad enabled, ``params`` gives
        other tensors than its own parameters, whose gradients DDP would not average.
      KeyError: a name in ``params`` or ``masks`` that is not a parameter or buffer of the module
        (whatever ``strict`` is).
      RuntimeError: with ``strict=True``, a parameter or buffer missing from ``params`` (torch's
        error type).
      ValueError: a mask whose shape is not its param's; two different values (or masks) for the
        names of one tied tensor (or values that cannot be compared, e.g. on ``meta``).

    Example:
      >>> lin = torch.nn.Linear(2, 1)
      >>> masks = {"weight": torch.zeros(1, 2, dtype=torch.bool)}
      >>> out = functional_call(lin, dict(lin.named_parameters()), (torch.ones(1, 2),), masks=masks)
      >>> torch.allclose(out, lin.bias)
      True
    """
    _check_wrapper(module, params)
    with _lock_of(module):
        return _call(module, params, args, kwargs, masks, strict)


def _check_wrapper(module: torch.nn.Module, params: Tree) -> None:
    """Refuse the distributed wrappers that would silently ignore or not synchronize what is swapped in.

    FSDP2 all-gathers its own sharded parameters before each forward and registers the unsharded
    ones on the module, over anything ``torch.func.functional_call`` swapped in (masks included);
    on a module not yet run it even adopts the swapped-in tensors as its parameters. DDP averages
    the gradients of its own ``Parameter`` objects only: gradients of other tensors (detached
    copies, ``torch.func.grad``'s inputs) stay per rank. The checks read ``sys.modules``, so
    nothing is imported and a process that never loaded these wrappers pays nothing.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and hasattr(fsdp, "FSDPModule"):
        for name, sub in module.named_modules():
            if isinstance(sub, fsdp.FSDPModule):
                where = f"its submodule {name!r} ({type(sub).__name__})" if name else type(sub).__name__
                raise TypeError(
                    f"functional_call cannot run {type(module).__name__}: {where} is sharded by FSDP2 "
                    f"(fully_shard), whose pre-forward all-gather re-registers its own parameters over the "
                    f"params and masks swapped in here, so they would be silently ignored. Under FSDP2, prune "
                    f"the sharded params (masks come back as DTensors), zero them in place with "
                    f"funcprune.distributed.keep_pruned(optimizer, params, masks) (or apply_masks_), and call "
                    f"the model itself"
                )
    ddp = sys.modules.get("torch.nn.parallel.distributed")
    if ddp is not None and isinstance(module, ddp.DistributedDataParallel) and torch.is_grad_enabled():
        own = dict(module.named_parameters(remove_duplicate=False))
        foreign = [
            name for name, value in _pytree.named_leaves(params).items() if name in own and value is not own[name]
        ]
        if foreign:
            raise TypeError(
                f"functional_call on DistributedDataParallel with grad enabled needs its own parameters: "
                f"params give other tensors for {foreign[:3]}{' ...' if len(foreign) > 3 else ''} (detached "
                f"copies, or torch.func transforms' inputs), whose gradients DDP would not average across ranks. "
                f"Pass dict(ddp.named_parameters()) (masks= as usual) and call loss.backward(), or run "
                f"functional_call on ddp.module and all-reduce the gradients yourself"
            )


# torch.func.functional_call swaps the given tensors into the module for the duration of the
# forward: two threads doing that on one module would run on each other's tensors and could leave
# them in it. One reentrant lock per module (kept outside it, so copies and pickles of the module
# are unaffected) serializes the calls on a module; calls on different modules run concurrently.
_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_of(module: torch.nn.Module) -> threading.RLock:
    lock = _LOCKS.get(module)
    if lock is None:
        with _LOCKS_GUARD:
            lock = _LOCKS.get(module)
            if lock is None:
                lock = _LOCKS[module] = threading.RLock()
    return lock


def _call(
    module: torch.nn.Module, params: Tree, args: Any, kwargs: dict[str, Any] | None, masks: Tree | None, strict: bool
) -> Any:
    layout = _layout(module)
    named = _pytree.named_leaves(params)
    named_masks = _pytree.named_leaves(masks) if masks is not None else {}
    unknown = [name for name in (*named_masks, *named) if name not in layout.tensors and name not in layout.pruned]
    if unknown:
        raise unknown_names(
            unknown, layout.tensors, "params/masks", among=f"the parameters and buffers of {type(module).__name__}"
        )
    values = {_module_name(name, layout): value for name, value in named.items()}
    if len(values) != len(named):
        raise ValueError("params name a pruned tensor both by its original name and as '<name>_orig'")
    products = {}
    for name, mask in named_masks.items():
        target = _module_name(name, layout)
        value = values.get(target, layout.tensors[target])
        if mask.shape != value.shape:
            raise shape_mismatch("mask", mask.shape, "the param", value.shape, name=name)
        if name in layout.pruned:  # the module's own hook multiplies them, so the forward is unchanged
            values[target[: -len("_orig")] + "_mask"] = mask
        else:
            products[name] = mask
    values = _untied(values, layout.tied, "params")
    if strict:
        _check_complete(module, layout, values)
    for name, mask in _untied(products, layout.tied, "masks").items():
        values[name] = masked(values.get(name, layout.tensors[name]), mask)
    # The pruning hooks store what they compute on the module; put the module's own values back.
    computed = [(sub, local, sub.__dict__.get(local)) for sub, local in layout.pruned.values()]
    try:
        return torch.func.functional_call(module, values, args, kwargs, tie_weights=False)
    finally:
        for sub, local, value in computed:
            if value is not None:
                setattr(sub, local, value)
            else:  # nothing was stored before: drop what the hook wrote (it may be a vmap-batched tensor)
                sub.__dict__.pop(local, None)


def _module_name(name: str, layout: Layout) -> str:
    """The module's own name for ``name``: ``<name>_orig`` for a pruned tensor."""
    return name + "_orig" if name in layout.pruned else name


def _untied(named: dict[str, Any], tied: dict[str, list[str]], what: str) -> dict[str, Any]:
    """``named`` with a tied tensor's value under all of its names, as ``torch.func.functional_call`` ties them.

    A tied tensor given under several names must have one value under all of them (each name keeps
    its own tensor, so gradients reach each): see :func:`_same_value` for what counts as one value.
    """
    out = dict(named)
    for name, value in named.items():
        for twin in tied.get(name, ()):
            other = out.setdefault(twin, value)
            if other is not value and not _same_value(other, value):
                raise ValueError(
                    f"{what} give different values for {name!r} and {twin!r}, which are one tied tensor of the module"
                )
    return out


_functorch = torch._C._functorch


def _same_value(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` hold the same values, cheapest check first.

    One object; else (through matching torch.func wrappers: ``grad`` and ``vmap`` wrap each input
    separately) one view of one storage (``named_parameters(remove_duplicate=False)`` plus
    ``detach()``); else, for real tensors only, a full compare (equal masks made twice by
    ``prune``). Meta or fake tensors with different storage count as different.
    """
    while a is not b:
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            return False
        if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
            return False
        wrapped_a, wrapped_b = _functorch.is_functorch_wrapped_tensor(a), _functorch.is_functorch_wrapped_tensor(b)
        if wrapped_a or wrapped_b:
            if (
                not (wrapped_a and wrapped_b)
                or _functorch.maybe_get_level(a) != _functorch.maybe_get_level(b)
                or _functorch.is_batchedtensor(a) != _functorch.is_batchedtensor(b)
                or _functorch.maybe_get_bdim(a) != _functorch.maybe_get_bdim(b)
            ):
                return False
            a, b = _functorch.get_unwrapped(a), _functorch.get_unwrapped(b)
            continue
        if not is_concrete(a) or not is_concrete(b) or a.layout != torch.strided or b.layout != torch.strided:
            return False
        if (
            a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset()
            and a.stride() == b.stride()
        ):
            return True
        return bool(torch.equal(a, b))
    return True


def _check_complete(module: torch.nn.Module, layout: Layout, values: dict[str, Any]) -> None:
    """``strict=True``: every tensor of the module is given (pruned ones by their original name)."""
    masks = {name + "_mask" for name in layout.pruned}
    original = {name + "_orig": name for name in layout.pruned}
    missing = [original.get(name, name) for name in layout.tensors if name not in values and name not in masks]
    if missing:
        raise RuntimeError(
            f"Error(s) in reparametrizing for {module._get_name()}:\n\tMissing key(s): {', '.join(map(repr, missing))}."
        )
