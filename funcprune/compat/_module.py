"""The stateful half of compat: installing and removing the ``_orig``/``_mask``/hook reparametrization.

Layout is torch's to the letter (the same ``register_parameter``/``register_buffer``/``setattr``
calls in the same order), with two differences that only show when torch is broken:

* everything that can fail (method arguments, the mask computation) runs before the module is
  touched, and the few mutations are rolled back as a whole, so a failed call leaves the module as
  it was, parameter order included;
* a pruned module's class is swapped for a cached subclass of its own class (same ``__name__``,
  ``__qualname__`` and ``__module__``, so ``isinstance`` and ``repr`` are unchanged) whose
  ``__reduce_ex__`` leaves out the computed tensors (non-leaf, which ``copy.deepcopy`` refuses)
  and whose ``__setstate__`` recomputes them. ``copy.copy``, ``copy.deepcopy``, ``pickle`` and
  ``torch.save`` then all work; pickles rebuild through :func:`_new_pruned`, so they load without
  the dynamic class. The visible difference: ``type(module) is nn.Linear`` is False while pruned
  (``type(module).__bases__ == (nn.Linear,)``); ``remove`` of the last pruned tensor swaps it back.
"""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.utils.prune as _torch_prune

_BUILTIN_COMPUTE = set()
_READ_ONLY_DEFAULT = set()
_PRUNED_CLASSES: Dict[type, type] = {}


def register_builtin_compute(*classes) -> None:
    """Mark ``compute_mask`` of ``classes`` as the core's (the container may then skip slicing)."""
    _BUILTIN_COMPUTE.update(cls.compute_mask for cls in classes)


def register_read_only_default(*classes) -> None:
    """Mark ``compute_mask`` of ``classes`` as never writing to ``default_mask`` nor keeping it."""
    _READ_ONLY_DEFAULT.update(cls.compute_mask for cls in classes)


def _first_default_mask(method, orig: torch.Tensor) -> torch.Tensor:
    """torch's all-ones default mask; for methods that only read it, a view of one 1 (no allocation)."""
    if getattr(type(method), "compute_mask", None) in _READ_ONLY_DEFAULT:
        return torch.ones((), dtype=orig.dtype, device=orig.device).expand(orig.shape)
    return torch.ones_like(orig)


def is_builtin_compute(method) -> bool:
    """True when ``method`` still uses a built-in ``compute_mask`` (not overridden, not mocked)."""
    return getattr(type(method), "compute_mask", None) in _BUILTIN_COMPUTE


def is_pruning_hook(hook) -> bool:
    """A pruning method of compat or of torch.nn.utils.prune."""
    return isinstance(hook, _torch_prune.BasePruningMethod)


def pruning_hook(module: torch.nn.Module, name: str):
    """``(key, hook)`` of the pruning hook of ``module.<name>``, or ``(None, None)``."""
    found = [(k, h) for k, h in module._forward_pre_hooks.items()
             if is_pruning_hook(h) and getattr(h, "_tensor_name", None) == name]
    if len(found) > 1:
        raise AssertionError(f"Avoid adding multiple pruning hooks to the same tensor {name} of module "
                             f"{module}. Use a PruningContainer.")
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


class _Snapshot:
    """What pruning may change on a module, to put it back exactly (dict order included)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.cls = type(module)
        self.attrs = dict(module.__dict__)
        self.dicts = {k: v.copy() for k, v in self.attrs.items() if k in ("_parameters", "_buffers",
                                                                         "_forward_pre_hooks")}
        self.lists = {k: list(v) for k, v in self.attrs.items() if isinstance(v, list)}
        self.containers = [(h, h._pruning_methods) for h in module._forward_pre_hooks.values()
                           if isinstance(h, _torch_prune.PruningContainer)]

    def restore(self) -> None:
        module = self.module
        module.__dict__.clear()
        module.__dict__.update(self.attrs)
        for key, saved in self.dicts.items():
            self.attrs[key].clear()
            self.attrs[key].update(saved)
        for key, saved in self.lists.items():
            self.attrs[key][:] = saved
        for hook, methods in self.containers:
            hook._pruning_methods = methods
        module.__class__ = self.cls


def _grown(old, method, container_cls):
    """The hook after adding ``method`` to ``old`` (a container grows in place; the snapshot undoes it)."""
    if old is None:
        return method
    if isinstance(old, _torch_prune.PruningContainer):
        old.add_pruning_method(method)
        return old
    container = container_cls(old)
    container.add_pruning_method(method)
    return container


def apply(cls, module, name, args, kwargs, importance_scores, container_cls):
    """``BasePruningMethod.apply``: torch's semantics, mask first, all-or-nothing."""
    old_key, old = pruning_hook(module, name)
    method = cls(*args, **kwargs)
    method._tensor_name = name
    orig = getattr(module, name)
    if importance_scores is not None and importance_scores.shape != orig.shape:
        raise AssertionError(f"importance_scores should have the same shape as parameter {name} of {module}, "
                             f"got {importance_scores.shape} vs {orig.shape}")
    scores = orig if importance_scores is None else importance_scores
    snapshot = _Snapshot(module)
    try:
        hook = _grown(old, method, container_cls)
        if old is None:
            default_mask = _first_default_mask(method, orig)
        else:
            default_mask = getattr(module, name + "_mask").detach().clone(memory_format=torch.contiguous_format)
        mask = hook.compute_mask(scores, default_mask=default_mask)
        if mask is default_mask and old is None:  # nothing pruned: the mask is torch's tensor of ones
            mask = torch.ones_like(orig)
        if old is None:
            module.register_parameter(name + "_orig", orig)
            del module._parameters[name]
        module.register_buffer(name + "_mask", mask)
        setattr(module, name, hook.apply_mask(module))
        if old_key is not None:
            del module._forward_pre_hooks[old_key]
        module.register_forward_pre_hook(hook)
        mark_pruned(module)
    except BaseException:
        snapshot.restore()
        raise
    return hook


def unmark_if_unpruned(module: torch.nn.Module, ignore=None) -> None:
    """Give ``module`` its own class back once no pruning hook (other than ``ignore``) is left."""
    base = type(module).__dict__.get("_funcprune_base")
    if base is None:
        return
    if not any(is_pruning_hook(h) and h is not ignore for h in module._forward_pre_hooks.values()):
        module.__class__ = base


def mark_pruned(module: torch.nn.Module) -> None:
    """Swap ``module``'s class for its pruned twin (see the module docstring); idempotent."""
    cls = type(module)
    if "_funcprune_base" not in cls.__dict__:
        module.__class__ = _pruned_class(cls)


def _pruned_class(base: type) -> type:
    cls = _PRUNED_CLASSES.get(base)
    if cls is None:
        namespace = {"__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__,
                     "_funcprune_base": base, "__reduce_ex__": _reduce_ex, "__setstate__": _setstate}
        cls = _PRUNED_CLASSES[base] = type(base.__name__, (base,), namespace)
    return cls


def _computed_names(module: torch.nn.Module) -> list:
    return [h._tensor_name for h in module._forward_pre_hooks.values()
            if is_pruning_hook(h) and getattr(h, "_tensor_name", None) in module.__dict__]


def _reduce_ex(self, protocol):
    computed = set(_computed_names(self))
    state = {k: v for k, v in self.__dict__.items() if k not in computed}
    return _new_pruned, (type(self)._funcprune_base,), state


def _setstate(self, state) -> None:
    type(self)._funcprune_base.__setstate__(self, state)
    for hook in list(self._forward_pre_hooks.values()):
        if is_pruning_hook(hook) and getattr(hook, "_tensor_name", None) is not None:
            setattr(self, hook._tensor_name, hook.apply_mask(self))


def _new_pruned(base: type) -> torch.nn.Module:
    """An empty instance of ``base``'s pruned twin; pickles of pruned modules rebuild through it."""
    cls = _pruned_class(base)
    return cls.__new__(cls)


def unprune(sub: torch.nn.Module, local: str) -> None:
    """Drop the reparametrization of ``sub.<local>`` without applying its mask (``local`` becomes a plain parameter)."""
    key, _ = pruning_hook(sub, local)
    del sub._forward_pre_hooks[key]
    orig = sub._parameters.pop(local + "_orig")
    del sub._buffers[local + "_mask"]
    if local in sub.__dict__:
        delattr(sub, local)
    setattr(sub, local, orig)
    unmark_if_unpruned(sub)
