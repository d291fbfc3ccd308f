"""Reading and writing a module's pruning layout: its tensors, tied names, and torch's reparametrization.

Neutral ground below both the functional core (``call``) and the module-facing layers (``bridge``,
``compat``): it knows torch's hook protocol (``<name>_orig`` parameter, ``<name>_mask`` buffer,
the method object as forward pre-hook), not who installed the hook. Both ``compat`` and
``bridge.to_module`` write the layout through :func:`install` and :func:`unprune`. Nothing here
imports ``compat`` or ``bridge``.

A module pruned through :func:`install` keeps its class and gains copy support (torch's pruned
modules hold a computed, non-leaf tensor, which ``copy.deepcopy`` refuses): an instance
attribute ``__reduce_ex__`` (``copy.copy``, ``copy.deepcopy``, ``pickle`` and ``torch.save`` all
look it up on the instance) that leaves the computed tensors out; the copy recomputes them and
pickles rebuild through :func:`rebuild` into the plain class. The attribute holds only a weak
reference to its module, is not part of ``state_dict``, and goes when the last pruned tensor is
removed.
"""

from __future__ import annotations

import threading
import types
import weakref
from typing import NamedTuple, TypeGuard

import torch
import torch.nn.utils.prune as _torch_prune

# Held while a call reads or changes a module's ``_parameters``/``_buffers``/``__dict__``/hooks, so
# two threads pruning different tensors of one module never see a dict change under an iteration.
# Mask computations (the costly part, and user code that may wait on other threads) run outside it.
# One lock for all modules: its sections are a few dict operations, and a global prune spanning
# many modules can never take two locks in opposite orders.
LOCK = threading.RLock()


def reparametrized(module: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str, str]]:
    """``{qualified original name: (submodule, local name, prefix)}`` of every pruned tensor."""
    found = {}
    for prefix, sub in module.named_modules():
        for name in pruned_locals(sub):
            found[f"{prefix}.{name}" if prefix else name] = (sub, name, prefix)
    return found


def pruned_locals(sub: torch.nn.Module):
    """Local names of ``sub``'s tensors reparametrized by a pruning hook (compat's or torch's)."""
    for hook in list(sub._forward_pre_hooks.values()):  # a snapshot: another thread may prune meanwhile
        if isinstance(hook, _torch_prune.BasePruningMethod):
            name = getattr(hook, "_tensor_name", None)
            if name is not None:
                yield name


class Layout(NamedTuple):
    """Where a module keeps its tensors, read in one walk of its submodules."""

    tensors: dict[str, torch.Tensor]  # every parameter and buffer, under each of its names
    pruned: dict[str, tuple[torch.nn.Module, str]]  # original name of a pruned tensor -> (submodule, local)
    tied: dict[str, list[str]]  # name of a tensor the module holds under several names -> all its names


def layout(module: torch.nn.Module) -> Layout:
    """The :class:`Layout` of ``module`` (every name, ``remove_duplicate=False``)."""
    # One walk instead of a lookup per name plus torch.func.functional_call's own walk for tied
    # tensors: on ResNet-18 this is most of the call's Python overhead.
    names_of: dict[int, list[str]]
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


def is_pruning_hook(hook) -> TypeGuard[_torch_prune.BasePruningMethod]:
    """A pruning method of compat or of torch.nn.utils.prune."""
    return isinstance(hook, _torch_prune.BasePruningMethod)


def pruning_hook(module: torch.nn.Module, name: str):
    """``(key, hook)`` of the pruning hook of ``module.<name>``, or ``(None, None)``."""
    found = [
        (k, h)
        for k, h in list(module._forward_pre_hooks.items())  # a snapshot: see LOCK
        if is_pruning_hook(h) and getattr(h, "_tensor_name", None) == name
    ]
    if len(found) > 1:
        raise AssertionError(
            f"Avoid adding multiple pruning hooks to the same tensor {name} of module {module}. Use a PruningContainer."
        )
    return found[0] if found else (None, None)


def reparam_tensors(module: torch.nn.Module, name: str):
    """``(mask, orig)`` of a pruned tensor, as stored now (also when ``functional_call`` swapped them)."""
    mask = module._buffers.get(name + "_mask")
    orig = module._parameters.get(name + "_orig")
    if mask is None:
        mask = getattr(module, name + "_mask")
    if orig is None:
        orig = getattr(module, name + "_orig")
    return mask, orig


def install(module: torch.nn.Module, name: str, hook, mask: torch.Tensor, *, orig=None, old_key=None) -> None:
    """Write torch's layout for ``module.<name>`` pruned by ``hook`` with ``mask`` (torch's calls, in torch's order).

    A first pruning passes the parameter as ``orig``: it moves to ``<name>_orig``. Every pruning
    (re)registers the ``<name>_mask`` buffer, recomputes the attribute ``name`` and registers
    ``hook`` last among the hooks (replacing the hook under ``old_key``, the tensor's previous
    one). Callers validate first and undo on failure; the changes run under :data:`LOCK`.
    """
    with LOCK:
        if orig is not None:
            module.register_parameter(name + "_orig", orig)
            del module._parameters[name]
        module.register_buffer(name + "_mask", mask)
        setattr(module, name, hook.apply_mask(module))
        if old_key is not None:
            del module._forward_pre_hooks[old_key]
        module.register_forward_pre_hook(hook)
        mark_pruned(module)


def unprune(sub: torch.nn.Module, local: str) -> None:
    """Drop the reparametrization of ``sub.<local>`` without applying its mask (``local`` becomes a plain parameter)."""
    with LOCK:
        key, _ = pruning_hook(sub, local)
        del sub._forward_pre_hooks[key]
        orig = sub._parameters.pop(local + "_orig")
        del sub._buffers[local + "_mask"]
        if local in sub.__dict__:
            delattr(sub, local)
        setattr(sub, local, orig)
        unmark_if_unpruned(sub)


def unmark_if_unpruned(module: torch.nn.Module, ignore=None) -> None:
    """Drop the copy hook of :func:`mark_pruned` once no pruning hook (other than ``ignore``) is left."""
    if not isinstance(module.__dict__.get("__reduce_ex__"), PrunedReduce):
        return
    if not any(is_pruning_hook(h) and h is not ignore for h in list(module._forward_pre_hooks.values())):
        module.__dict__.pop("__reduce_ex__", None)


def mark_pruned(module: torch.nn.Module) -> None:
    """Give ``module`` the instance-level ``__reduce_ex__`` that copies it (see the module docstring); idempotent."""
    hook = module.__dict__.get("__reduce_ex__")
    if not (isinstance(hook, PrunedReduce) and hook.ref() is module):  # none, or copied from another module
        module.__dict__["__reduce_ex__"] = PrunedReduce(module)


class PrunedReduce:
    """``module.__reduce_ex__`` of a pruned module: its state without the computed tensors.

    Holds a weak reference, so a pruned module is freed as soon as it is unreferenced.
    """

    def __init__(self, module=None):
        self.ref = (lambda: None) if module is None else weakref.ref(module)

    def __call__(self, protocol):
        module = self.ref()
        if module is None:
            raise RuntimeError("a pruned module's __reduce_ex__ outlived its module (copied __dict__?)")
        computed = set(_computed_names(module))
        state = module.__getstate__()  # a subclass's own __getstate__, as for the unpruned module
        if isinstance(state, dict):
            state = {k: v for k, v in state.items() if k not in computed and k not in ("__reduce_ex__", "__setstate__")}
        return rebuild, (type(module),), state

    def __reduce_ex__(self, protocol):  # a module's __dict__ pickled on its own: mark_pruned replaces it
        return PrunedReduce, ()

    def __deepcopy__(self, memo):
        return PrunedReduce()


def _computed_names(module: torch.nn.Module) -> list:
    return [
        h._tensor_name
        for h in list(module._forward_pre_hooks.values())
        if is_pruning_hook(h) and getattr(h, "_tensor_name", None) in module.__dict__
    ]


def _setstate(module: torch.nn.Module, state) -> None:
    """Load ``state`` into an instance made by :func:`rebuild`; recompute the pruned tensors."""
    module.__dict__.pop("__setstate__", None)
    type(module).__setstate__(module, state)
    for hook in list(module._forward_pre_hooks.values()):
        if is_pruning_hook(hook) and getattr(hook, "_tensor_name", None) is not None:
            setattr(module, hook._tensor_name, hook.apply_mask(module))
    mark_pruned(module)


def rebuild(cls: type[torch.nn.Module]) -> torch.nn.Module:
    """An empty ``cls`` instance whose (instance-level) ``__setstate__`` rebuilds a pruned module."""
    module = cls.__new__(cls)
    module.__dict__["__setstate__"] = types.MethodType(_setstate, module)
    return module
