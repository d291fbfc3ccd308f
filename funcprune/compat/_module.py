"""The stateful half of compat: installing and removing the ``_orig``/``_mask``/hook reparametrization.

Layout is torch's to the letter (the same ``register_parameter``/``register_buffer``/``setattr``
calls in the same order), with two differences that only show when torch is broken:

* everything that can fail (method arguments, the mask computation) runs before the module is
  touched, and the few mutations of one call are rolled back if a later step fails: exactly the
  entries this call changed (its name's parameter, ``_orig``, ``_mask``, attribute and hook,
  its container's history), nothing else, so a failed call leaves the module as it was
  (parameter and hook order included) and never undoes what another thread did meanwhile to
  another tensor of the same module;
* ``copy.deepcopy`` works (torch's pruned modules hold a computed, non-leaf tensor, which
  ``deepcopy`` refuses) and the class is **not** changed (``type(module) is nn.Linear`` stays
  true, so code such as torch.ao's ``make_config_from_model`` still recognises the layer): see
  :mod:`funcprune._layout`, which writes the layout for both compat and ``bridge.to_module``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.utils.prune as _torch_prune

# Re-exported for compat's other modules (the writer itself is neutral: bridge.to_module uses it too).
from .._layout import (  # noqa: F401
    LOCK,
    install,
    is_pruning_hook,
    pruning_hook,
    rebuild,
    reparam_tensors,
    unmark_if_unpruned,
    unprune,
)

_rebuild = rebuild  # pickles of funcprune 1.0 and 1.1 name funcprune.compat._module._rebuild

_BUILTIN_COMPUTE: set[Callable[..., Any]] = set()
_READ_ONLY_DEFAULT: set[Callable[..., Any]] = set()
_PRUNED_CLASSES: dict[type, type] = {}


def register_builtin_compute(*classes) -> None:
    """Mark ``compute_mask`` of ``classes`` as the core's (the container may then skip slicing)."""
    _BUILTIN_COMPUTE.update(cls.compute_mask for cls in classes)


def register_read_only_default(*classes) -> None:
    """Mark ``compute_mask`` of ``classes`` as never writing to ``default_mask`` nor keeping it."""
    _READ_ONLY_DEFAULT.update(cls.compute_mask for cls in classes)


def _first_default_mask(method, orig: torch.Tensor) -> torch.Tensor:
    """torch's all-ones default mask; for methods that only read it, a view of one 1 (no allocation)."""
    if getattr(type(method), "compute_mask", None) in _READ_ONLY_DEFAULT:
        ones = torch.ones((), dtype=orig.dtype, device=orig.device).expand(orig.shape)
        # a marker on this view only: lets a method skip multiplying by it (see is_all_ones)
        ones._funcprune_all_ones = True  # type: ignore[attr-defined]
        return ones
    return torch.ones_like(orig)


def is_all_ones(default_mask: torch.Tensor) -> bool:
    """True for the all-ones view :func:`_first_default_mask` made (so ``x * default_mask == x``)."""
    return getattr(default_mask, "_funcprune_all_ones", False)


def is_builtin_compute(method) -> bool:
    """True when ``method`` still uses a built-in ``compute_mask`` (not overridden, not mocked)."""
    return getattr(type(method), "compute_mask", None) in _BUILTIN_COMPUTE


_MISSING = object()


def _put_back(table: dict, key, value, order: list) -> None:
    """Give ``table[key]`` its old ``value`` (or remove it) and its old place among the keys of ``order``.

    Only ``key`` and the keys that followed it are touched (each moved in one dict operation), so
    entries that other callers add meanwhile stay.
    """
    if value is _MISSING:
        table.pop(key, None)
        return
    present = key in table
    table[key] = value
    if present or key not in order:
        return  # replaced in place: its position never changed
    for later in order[order.index(key) + 1 :]:
        moved = table.pop(later, _MISSING)  # one operation: another thread may remove it meanwhile
        if moved is not _MISSING:
            table[later] = moved


class Rollback:
    """What one pruning call may change on ``module`` for ``name``, to put exactly that back.

    The entries for ``name`` and ``name + "_orig"`` in ``_parameters``, ``name + "_mask"`` in
    ``_buffers``, the pruning hook of ``name`` (and its container's history), the attribute
    ``name`` and list attributes holding the tensor (an RNN's ``_flat_weights``). Other names,
    hooks and attributes are left as they are when :meth:`restore` runs.
    """

    def __init__(self, module: torch.nn.Module, name: str):
        self.module, self.name = module, name
        d = module.__dict__
        self.param_order = list(module._parameters)
        self.params = {k: module._parameters.get(k, _MISSING) for k in (name, name + "_orig")}
        self.buffer_order = list(module._buffers)
        self.mask = module._buffers.get(name + "_mask", _MISSING)
        self.hook_order = list(module._forward_pre_hooks)
        self.hook_key, self.hook = pruning_hook(module, name)
        self.methods = getattr(self.hook, "_pruning_methods", None)
        self.attr = d.get(name, _MISSING)
        current = d.get(name, self.params[name])
        self.slots = [
            (v, i, x)
            for v in list(d.values())
            if isinstance(v, list)
            for i, x in enumerate(v)
            if current is not _MISSING and x is current
        ]
        self.was_pruned = "__reduce_ex__" in d

    def restore(self) -> None:
        module, name = self.module, self.name
        for key, value in self.params.items():
            _put_back(module._parameters, key, value, self.param_order)
        _put_back(module._buffers, name + "_mask", self.mask, self.buffer_order)
        hooks = module._forward_pre_hooks
        for hook_key in [
            k
            for k, h in list(hooks.items())
            if k not in self.hook_order and is_pruning_hook(h) and getattr(h, "_tensor_name", None) == name
        ]:
            hooks.pop(hook_key, None)  # the hook this call registered
        if self.hook_key is not None:
            _put_back(hooks, self.hook_key, self.hook, self.hook_order)
            if self.methods is not None:
                self.hook._pruning_methods = self.methods
        if self.attr is _MISSING:
            module.__dict__.pop(name, None)
        else:
            module.__dict__[name] = self.attr
        for values, i, x in self.slots:
            if i < len(values):
                values[i] = x
        if not self.was_pruned:
            unmark_if_unpruned(module)


def _grown(old, method, container_cls):
    """The hook after adding ``method`` to ``old`` (a container grows in place; the rollback undoes it)."""
    if old is None:
        return method
    if isinstance(old, _torch_prune.PruningContainer):
        old.add_pruning_method(method)
        return old
    container = container_cls(old)
    container.add_pruning_method(method)
    return container


def check_not_sharded(module: torch.nn.Module, name: str) -> None:
    """Raise ``TypeError`` if ``module.<name>`` (or ``<name>_orig``) is a DTensor (FSDP2, tensor parallel)."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    param = module._parameters.get(name, module._parameters.get(name + "_orig"))
    if dtensor is not None and isinstance(param, dtensor.DTensor):
        raise TypeError(
            f"funcprune.compat cannot prune {type(module).__name__}.{name}: it is a DTensor (sharded by "
            f"FSDP2's fully_shard or tensor parallelism), and compat's full-size {name}_mask buffer and "
            f"forward pre-hook do not fit a sharded parameter. Prune the params tree with the functional "
            f"API (the masks are DTensors like the params) and train with "
            f"funcprune.distributed.keep_pruned, or prune with compat before fully_shard"
        )


def apply(cls, module, name, args, kwargs, importance_scores, container_cls):
    """``BasePruningMethod.apply``: torch's semantics, mask first, all-or-nothing, thread-safe per tensor."""
    with LOCK:
        check_not_sharded(module, name)
        old_key, old = pruning_hook(module, name)
        orig = getattr(module, name)
        rollback = Rollback(module, name)
    method = cls(*args, **kwargs)
    method._tensor_name = name
    if importance_scores is not None and importance_scores.shape != orig.shape:
        raise AssertionError(
            f"importance_scores should have the same shape as parameter {name} of {module}, "
            f"got {importance_scores.shape} vs {orig.shape}"
        )
    scores = orig if importance_scores is None else importance_scores
    try:
        hook = _grown(old, method, container_cls)
        if old is None:
            default_mask = _first_default_mask(method, orig)
        else:
            default_mask = getattr(module, name + "_mask").detach().clone(memory_format=torch.contiguous_format)
        mask = hook.compute_mask(scores, default_mask=default_mask)
        if mask is default_mask and old is None:  # nothing pruned: the mask is torch's tensor of ones
            mask = torch.ones_like(orig)
        install(module, name, hook, mask, orig=orig if old is None else None, old_key=old_key)
    except BaseException:
        with LOCK:
            rollback.restore()
        raise
    return hook


def _pruned_class(base: type[torch.nn.Module]) -> type:
    """For pickles of funcprune < 1.0 (which call :func:`_new_pruned`): a class whose ``__new__``
    gives :func:`funcprune._layout.rebuild`'s plain ``base`` instance."""
    cls = _PRUNED_CLASSES.get(base)
    if cls is None:
        cls = _PRUNED_CLASSES[base] = type(base.__name__, (), {"__new__": staticmethod(lambda _: rebuild(base))})
    return cls


def _new_pruned(base: type) -> torch.nn.Module:
    """An empty instance of ``base``'s pruned twin; pickles of pruned modules rebuild through it."""
    cls: Any = _pruned_class(base)  # its __new__ takes the class alone
    return cls.__new__(cls)
