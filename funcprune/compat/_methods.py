"""The pruning method classes of ``torch.nn.utils.prune``, computing their masks with funcprune's core.

Each built-in ``compute_mask`` is a core tensor method called with ``mask=None`` (torch's methods
do not restrict themselves to survivors), combined with ``default_mask`` the way torch combines it.
Only :class:`PruningContainer` acts on survivors: for L1 and Ln it calls the core method with
``mask=default_mask`` (vectorized, no slicing) unless scores tie at the pruning boundary; for
anything else (random methods, user methods, mocks) and for such ties it slices the survivors
exactly as torch does, so seeds (and tie orders) give torch's masks.

Methods defined elsewhere (e.g. ``_beyond.py``) join the vectorized path by defining
``_survivor_mask(t, default_mask) -> bool mask`` (optionally ``_tied(t, default_mask, keep)``)
and calling ``_module.register_builtin_compute(TheirClass)``; plain subclasses need nothing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.utils.prune as _torch_prune

from .. import _amount, _select, methods
from . import _module
from ._amounts import _as_core_amount, _compute_nparams_toprune, _validate_pruning_amount_init

__all__ = ["BasePruningMethod", "PruningContainer", "Identity", "RandomUnstructured", "L1Unstructured",
           "RandomStructured", "LnStructured", "CustomFromMask"]


def _as_dtype(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as a new ``dtype`` tensor (through ``uint8``: bool casts are not vectorized)."""
    return keep.clone() if dtype == torch.bool else keep.view(torch.uint8).to(dtype)


def _zero_pruned(default_mask: torch.Tensor, keep: torch.Tensor, dtype=None) -> torch.Tensor:
    """A new mask: ``default_mask`` (cast to ``dtype``) with the entries ``keep`` drops set to 0."""
    dtype = default_mask.dtype if dtype is None else dtype
    return _as_dtype(keep, dtype).mul_(default_mask.to(dtype))


class BasePruningMethod(_torch_prune.BasePruningMethod):
    """Base class of pruning methods: subclass it, set ``PRUNING_TYPE`` and write ``compute_mask``.

    A subclass of torch's own ``BasePruningMethod``, so torch's ``remove``, ``is_pruned`` and
    ``PruningContainer`` accept compat hooks and the other way round. ``apply`` computes the mask
    before it touches the module: a failing call leaves the module exactly as it was.
    """

    @classmethod
    def apply(cls, module, name, *args, importance_scores=None, **kwargs):
        """Prune ``module.<name>`` with ``cls(*args, **kwargs)`` and return the forward pre-hook."""
        return _module.apply(cls, module, name, args, kwargs, importance_scores, PruningContainer)

    def apply_mask(self, module):
        """``module.<name>_mask * module.<name>_orig``, read when called (so swapped tensors count)."""
        name = self._tensor_name
        if name is None:
            raise AssertionError(f"Module {module} has to be pruned")
        mask, orig = _module.reparam_tensors(module, name)
        return (mask if mask.dtype == orig.dtype else mask.to(dtype=orig.dtype)) * orig

    def remove(self, module) -> None:
        """Make the pruning of ``module.<name>`` permanent (the original Parameter is back)."""
        super().remove(module)
        _module.unmark_if_unpruned(module, ignore=self)


class PruningContainer(BasePruningMethod, _torch_prune.PruningContainer):
    """The history of the methods applied to one tensor; the last one acts on what is left."""

    def compute_mask(self, t, default_mask):
        """``default_mask`` (as ``t``'s dtype) with the last method applied to its survivors."""
        method = self._pruning_methods[-1]
        if _module.is_builtin_compute(method):
            keep = method._survivor_mask(t, default_mask)
            tied = getattr(method, "_tied", None)
            if tied is None or not tied(t, default_mask, keep):
                return _as_dtype(keep, t.dtype)
        return _sliced_mask(method, t, default_mask)


def boundary_tie(keys, dropped, kept) -> bool:
    """True if a newly pruned entry scores the same as a kept one (lists of same-shaped tensors).

    Then which of the tied entries go is up to ``topk``'s tie order, which depends on the layout
    of what it is given; the container (and global pruning) falls back to torch's slicing so the
    mask is still torch's. Without such a tie every exact selection gives the same mask.
    """
    if not all(_amount._is_concrete(k) for k in keys):
        return False  # meta or fake tensors: no values, so no tie order to follow
    dtype = functools.reduce(torch.promote_types, [k.dtype for k in keys] + [torch.float32])
    hi = [torch.where(d, k.to(dtype), -float("inf")).amax() for k, d in zip(keys, dropped) if k.numel()]
    lo = [torch.where(s, k.to(dtype), float("inf")).amin() for k, s in zip(keys, kept) if k.numel()]
    return bool(hi) and bool(torch.stack(hi).amax() == torch.stack(lo).amin())


def _sliced_mask(method, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
    """torch's container glue for arbitrary methods: run ``method`` on the surviving slice of ``t``.

    Eager only (boolean indexing); used for random methods (torch draws over the slice) and user
    methods. Unlike torch, ``default_mask`` is never written to.
    """
    new_mask = default_mask.to(dtype=t.dtype, copy=True)
    kind = method.PRUNING_TYPE
    if kind == "unstructured":
        slc = default_mask == 1
    elif kind == "structured":
        if not hasattr(method, "dim"):
            raise AttributeError('Pruning methods of PRUNING_TYPE "structured" need to have the attribute '
                                 "`dim` defined.")
        dim = method.dim + t.dim() if method.dim < 0 else method.dim
        if dim < 0:
            raise IndexError(f"Index is out of bounds for tensor with dimensions {t.dim()}")
        alive = default_mask.sum(dim=[d for d in range(t.dim()) if d != dim]) != 0
        slc = tuple(alive if d == dim else slice(None) for d in range(t.dim()))
    elif kind == "global":
        slc = tuple(slice(None) for _ in range(t.dim()))
    else:
        raise ValueError(f"Unrecognized PRUNING_TYPE {kind}")
    partial = method.compute_mask(t[slc], default_mask=default_mask[slc])
    new_mask[slc] = partial.to(dtype=new_mask.dtype)
    return new_mask


class Identity(BasePruningMethod):
    """Prune nothing: only the reparametrization (a mask of ones)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return default_mask

    @classmethod
    def apply(cls, module, name):
        return super().apply(module, name)


class _Amount(BasePruningMethod):
    """Shared ``__init__`` of the methods taking an ``amount``."""

    def __init__(self, amount) -> None:
        _validate_pruning_amount_init(amount)
        self.amount = amount


class RandomUnstructured(_Amount):
    """Prune ``amount`` random entries (torch's ``rand_like`` draws, so seeds give torch's masks)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return _zero_pruned(default_mask, methods.random_unstructured(t, _as_core_amount(self.amount)))

    @classmethod
    def apply(cls, module, name, amount):
        return super().apply(module, name, amount=amount)


class L1Unstructured(_Amount):
    """Prune the ``amount`` entries of smallest absolute value (of ``t`` or the importance scores)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        return _zero_pruned(default_mask, methods.l1_unstructured(t, _as_core_amount(self.amount)))

    def _survivor_mask(self, t, default_mask):
        return methods.l1_unstructured(t, _as_core_amount(self.amount), mask=default_mask)

    def _tied(self, t, default_mask, keep):
        return boundary_tie([t.detach().abs()], [(default_mask != 0) & ~keep], [keep])

    @classmethod
    def apply(cls, module, name, amount, importance_scores=None):
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class _Structured(_Amount):
    def __init__(self, amount, dim=-1) -> None:
        super().__init__(amount)
        self.dim = dim

    def _combine(self, t, default_mask, keep):
        """torch's structured result: ``default_mask`` itself when nothing is pruned, else in ``t``'s dtype."""
        if _compute_nparams_toprune(self.amount, t.shape[self.dim]) == 0:
            return default_mask
        mask = _zero_pruned(default_mask, keep, t.dtype)
        if not t.is_contiguous():  # torch's structured masks start as zeros_like(t): t's memory format
            mask = torch.empty_like(t).copy_(mask)
        return mask


class RandomStructured(_Structured):
    """Prune ``amount`` random channels along ``dim`` (torch's ``torch.rand(channels)`` draws)."""

    PRUNING_TYPE = "structured"

    def compute_mask(self, t, default_mask):
        keep = methods.random_structured(t, _as_core_amount(self.amount), self.dim)
        return self._combine(t, default_mask, keep)

    @classmethod
    def apply(cls, module, name, amount, dim=-1):
        return super().apply(module, name, amount=amount, dim=dim)


class LnStructured(_Structured):
    """Prune the ``amount`` channels along ``dim`` of smallest L``n`` norm."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1) -> None:
        super().__init__(amount, dim)
        self.n = n

    def compute_mask(self, t, default_mask):
        keep = methods.ln_structured(t, _as_core_amount(self.amount), self.n, self.dim)
        return self._combine(t, default_mask, keep)

    def _survivor_mask(self, t, default_mask):
        return methods.ln_structured(t, _as_core_amount(self.amount), self.n, self.dim, mask=default_mask)

    def _tied(self, t, default_mask, keep):
        others = [d for d in range(t.dim()) if d != self.dim % t.dim()]
        kept = keep.any(dim=others)
        norms = _select.channel_norm(t.detach(), self.n, self.dim)  # the core's channel scores
        return boundary_tie([norms], [(default_mask != 0).any(dim=others) & ~kept], [kept])

    @classmethod
    def apply(cls, module, name, amount, n, dim, importance_scores=None):
        return super().apply(module, name, amount=amount, n=n, dim=dim, importance_scores=importance_scores)


class CustomFromMask(BasePruningMethod):
    """Prune where a given ``mask`` is zero.

    Once applied, the hook's ``mask`` is the module's ``<name>_mask`` buffer itself (torch keeps a
    second copy, in global pruning a view of one concatenated float vector of every mask).
    """

    PRUNING_TYPE = "global"

    def __init__(self, mask) -> None:
        self.mask = mask

    def compute_mask(self, t, default_mask):
        if default_mask.shape != self.mask.shape:
            raise AssertionError(f"default_mask shape {default_mask.shape} must match "
                                 f"self.mask shape {self.mask.shape}")
        return _zero_pruned(default_mask, methods.custom_from_mask(default_mask, self.mask))

    @classmethod
    def apply(cls, module, name, mask):
        hook = super().apply(module, name, mask=mask)
        method = hook[-1] if isinstance(hook, _torch_prune.PruningContainer) else hook
        method.mask = module._buffers[name + "_mask"]
        return hook


_module.register_builtin_compute(L1Unstructured, LnStructured)
_module.register_read_only_default(Identity, RandomUnstructured, L1Unstructured, RandomStructured, LnStructured,
                                  CustomFromMask)
