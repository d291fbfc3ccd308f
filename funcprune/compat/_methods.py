"""The pruning method classes of ``torch.nn.utils.prune``, computing their masks with funcprune's core.

Each built-in method makes torch's choices (the same count, the same draws, the same entries
among equal scores) without torch's copies where it can:

* unstructured L1 ranks the entries torch ranks (all of ``t``; in a container the entries whose
  mask is exactly 1) through :func:`funcprune.compat._ties.torch_order_select`, which is torch's
  top-k on the same vector unless the answer is unique (no tie straddles the cut), when a
  cheaper exact selection gives it; with :func:`tie_order` ``("index")`` it is the core's
  :func:`funcprune.methods.l1_unstructured` instead;
* Ln channels take their norms from torch's own ``_compute_norm`` (of the running torch: the
  accepted ``n`` and the numbers are torch's) over the channels torch keeps (``sum != 0``);
* random methods slice the survivors as torch does (torch draws over the slice), so seeds give
  torch's masks.

Methods defined elsewhere (e.g. ``_beyond.py``) join the vectorized container path by defining
``_survivor_mask(t, default_mask) -> bool mask`` and calling ``_module.register_builtin_compute``;
plain subclasses need nothing (torch's slicing).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import torch
import torch.nn.utils.prune as _torch_prune

from .. import methods, select
from .._amount import is_concrete
from . import _module
from ._amounts import (
    as_core_amount,
    check_not_bool,
    compute_norm,
    compute_nparams_toprune,
    prune_count,
    validate_pruning_amount_init,
    validate_pruning_dim,
    validate_structured_pruning,
)
from ._ties import torch_order_select

__all__ = [
    "BasePruningMethod",
    "PruningContainer",
    "Identity",
    "RandomUnstructured",
    "L1Unstructured",
    "RandomStructured",
    "LnStructured",
    "CustomFromMask",
    "tie_order",
    "current_tie_order",
    # for the other compat modules: masks in torch's dtype
    "as_dtype",
    "zero_pruned",
]

_TIE_ORDERS = ("torch", "index")
_tie_order = contextvars.ContextVar("funcprune_compat_tie_order", default="torch")


@contextlib.contextmanager
def tie_order(order: str):
    """Choose how compat breaks ties among equal scores at the pruning cut, inside a ``with`` block.

    ``"torch"`` (the default): the entries ``torch.nn.utils.prune`` prunes, bit for bit. torch's
    CPU top-k picks among equal values with ``std::nth_element``/``std::partial_sort``, an
    order that depends on every value it is given, so reproducing it needs torch's own input: for
    :func:`global_unstructured` that is the concatenation of every score (torch's memory and
    time). compat pays it only when a tie straddles the cut; otherwise (the answer is unique)
    it runs the core's chunked radix selection. On CUDA torch's order differs anyway.

    ``"index"``: the core's documented, device-independent rule: the same counts, and among
    equal scores at the cut the lowest global index (leaf order, then position) is pruned first.
    Global L1 then always takes the lean path (no concatenation); per-tensor L1 uses the core's
    :func:`funcprune.l1_unstructured`. Channels (Ln) and random methods are unaffected.

    The setting is per thread/task (a context variable) and nests.

    Args:
      order: ``"torch"`` or ``"index"``.

    Raises:
      ValueError: for any other ``order``.

    Example:
      >>> import funcprune.compat as prune
      >>> with prune.tie_order("index"):
      ...     m = prune.l1_unstructured(torch.nn.Linear(4, 1), "weight", 2)
    """
    if order not in _TIE_ORDERS:
        raise ValueError(f"tie order must be one of {_TIE_ORDERS}, got {order!r}")
    token = _tie_order.set(order)
    try:
        yield
    finally:
        _tie_order.reset(token)


def current_tie_order() -> str:
    """The tie order in effect (see :func:`tie_order`)."""
    return _tie_order.get()


def _as_dim(dim) -> int:
    """torch accepts a bool ``dim`` (``True`` is 1); the core wants an int."""
    return int(dim) if isinstance(dim, bool) else dim


def as_dtype(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as a new ``dtype`` tensor (through ``uint8``: bool casts are not vectorized)."""
    return keep.clone() if dtype == torch.bool else keep.view(torch.uint8).to(dtype)


def zero_pruned(default_mask: torch.Tensor, keep: torch.Tensor, dtype=None) -> torch.Tensor:
    """A new mask: ``default_mask`` (cast to ``dtype``) with the entries ``keep`` drops set to 0."""
    dtype = default_mask.dtype if dtype is None else dtype
    if _module.is_all_ones(default_mask):  # a first pruning: 1 where kept (a vectorized cast, no fill)
        return as_dtype(keep, dtype)
    return default_mask.to(dtype=dtype, copy=True).masked_fill_(keep.logical_not(), 0)


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
        with _module.LOCK:
            super().remove(module)
            _module.unmark_if_unpruned(module, ignore=self)


class PruningContainer(BasePruningMethod, _torch_prune.PruningContainer):
    """The history of the methods applied to one tensor; the last one acts on what is left."""

    def compute_mask(self, t, default_mask):
        """``default_mask`` (as ``t``'s dtype) with the last method applied to its survivors."""
        method = self._pruning_methods[-1]
        if _module.is_builtin_compute(method):
            in_container = getattr(method, "_in_container", None)
            if in_container is not None:
                return in_container(t, default_mask)
            # a builtin compute method: ours, which defines _survivor_mask
            return as_dtype(method._survivor_mask(t, default_mask), t.dtype)  # type: ignore[attr-defined]
        return _sliced_mask(method, t, default_mask)


def _sliced_mask(method, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
    """torch's container glue for arbitrary methods: run ``method`` on the surviving slice of ``t``.

    Eager only (boolean indexing); used for random methods (torch draws over the slice) and user
    methods. Unlike torch, ``default_mask`` is never written to.
    """
    new_mask = default_mask.to(dtype=t.dtype, copy=True)
    kind = method.PRUNING_TYPE
    slc: Any  # what torch indexes the mask with: a bool tensor or a tuple of index/slices
    if kind == "unstructured":
        slc = default_mask == 1
    elif kind == "structured":
        if not hasattr(method, "dim"):
            raise AttributeError(
                'Pruning methods of PRUNING_TYPE "structured" need to have the attribute `dim` defined.'
            )
        dim = _container_dim(method, t)
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
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name):  # type: ignore[override]
        return super().apply(module, name)


class _Amount(BasePruningMethod):
    """Shared ``__init__`` of the methods taking an ``amount``."""

    def __init__(self, amount) -> None:
        validate_pruning_amount_init(amount)
        self.amount = amount


class RandomUnstructured(_Amount):
    """Prune ``amount`` random entries (torch's ``rand_like`` draws, so seeds give torch's masks)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        if isinstance(self.amount, bool) and prune_count(self.amount, t.nelement()):
            torch.rand_like(t)  # torch draws, then its top-k rejects the bool
            check_not_bool(self.amount, True)
        return zero_pruned(default_mask, methods.random_unstructured(t, as_core_amount(self.amount)))

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, amount):  # type: ignore[override]
        return super().apply(module, name, amount=amount)


class L1Unstructured(_Amount):
    """Prune the ``amount`` entries of smallest absolute value (of ``t`` or the importance scores)."""

    PRUNING_TYPE = "unstructured"

    def compute_mask(self, t, default_mask):
        dropped = self._dropped(t, None)
        if _module.is_all_ones(default_mask):  # a first pruning: 1 where kept (a vectorized cast, no fill)
            return as_dtype(dropped.logical_not_(), default_mask.dtype)
        return default_mask.clone(memory_format=torch.contiguous_format).masked_fill_(dropped, 0)

    def _in_container(self, t, default_mask):
        """torch's container: the entries of ``default_mask`` equal to 1 are the candidates."""
        alive = default_mask == 1
        # Dropped entries are among those equal to 1, so a product by 0/1 sets exactly them to 0.
        return as_dtype(self._dropped(t, alive).logical_not_(), t.dtype).mul_(default_mask.to(dtype=t.dtype))

    def _dropped(self, t, alive):
        size = t.nelement() if alive is None else select.count_kept(alive)
        if not isinstance(size, int) or _tie_order.get() == "index":  # meta (no values): the core too
            keep = methods.l1_unstructured(
                t, as_core_amount(self.amount) if not isinstance(size, int) else self._count(size), mask=alive
            )
            return keep.logical_not_() if alive is None else alive & ~keep
        return torch_order_select(t.detach().abs(), self._count(size), largest=False, alive=alive)

    def _count(self, size: int) -> int:
        k = prune_count(self.amount, size)
        check_not_bool(self.amount, k)
        return k

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, amount, importance_scores=None):  # type: ignore[override]
        return super().apply(module, name, amount=amount, importance_scores=importance_scores)


class _Structured(_Amount):
    def __init__(self, amount, dim=-1) -> None:
        super().__init__(amount)
        self.dim = dim

    def _combine(self, t, default_mask, keep):
        """torch's structured result: ``default_mask`` itself when nothing is pruned, else
        ``zeros_like(t)`` with the kept channels set to 1, times ``default_mask``."""
        if compute_nparams_toprune(self.amount, t.shape[self.dim]) == 0:
            return default_mask
        mask = as_dtype(keep, t.dtype)
        if not t.is_contiguous():  # torch's structured masks start as zeros_like(t): t's memory format
            mask = torch.empty_like(t).copy_(mask)
        return mask if _module.is_all_ones(default_mask) else mask.mul_(default_mask.to(dtype=t.dtype))

    def _combine_channels(self, t, default_mask, kept):
        """:meth:`_combine` for a per-channel ``kept`` vector (broadcast as floats: a fast copy)."""
        if compute_nparams_toprune(self.amount, t.shape[self.dim]) == 0:
            return default_mask
        mask = torch.empty_like(t).copy_(_channel_view(kept.to(t.dtype), t, self.dim).expand(t.shape))
        return mask if _module.is_all_ones(default_mask) else mask.mul_(default_mask.to(dtype=t.dtype))

    def _checked_count(self, t) -> int:
        """torch's checks and count, in torch's order."""
        validate_structured_pruning(t)
        validate_pruning_dim(t, self.dim)
        return prune_count(self.amount, t.shape[self.dim])


class RandomStructured(_Structured):
    """Prune ``amount`` random channels along ``dim`` (torch's ``torch.rand(channels)`` draws)."""

    PRUNING_TYPE = "structured"

    def compute_mask(self, t, default_mask):
        if isinstance(self.amount, bool) and self._checked_count(t):
            torch.rand(t.shape[self.dim])  # torch draws, then its k-th value rejects the bool
            check_not_bool(self.amount, True)
        keep = methods.random_structured(t, as_core_amount(self.amount), _as_dim(self.dim))
        return self._combine(t, default_mask, keep)

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, amount, dim=-1):  # type: ignore[override]
        return super().apply(module, name, amount=amount, dim=dim)


class LnStructured(_Structured):
    """Prune the ``amount`` channels along ``dim`` of smallest L``n`` norm (torch's ``_compute_norm``)."""

    PRUNING_TYPE = "structured"

    def __init__(self, amount, n, dim=-1) -> None:
        super().__init__(amount, dim)
        self.n = n

    def compute_mask(self, t, default_mask):
        k = self._checked_count(t)
        norm = compute_norm(t.detach(), self.n, self.dim)  # torch's own: a bad `n` fails as in this torch
        if norm.shape != (t.shape[self.dim],):  # a matrix norm of some torch versions: torch's own steps
            # torch's method reads only amount, n and dim, which this class has under the same names
            return _torch_prune.LnStructured.compute_mask(self, t, default_mask)  # type: ignore[arg-type]
        if not is_concrete(norm):
            keep = methods.ln_structured(t, as_core_amount(self.amount), self.n, _as_dim(self.dim))
            return self._combine(t, default_mask, keep)
        kept = torch_order_select(norm, t.shape[self.dim] - k, largest=True)
        return self._combine_channels(t, default_mask, kept)

    def _in_container(self, t, default_mask):
        """torch's container: the channels whose ``default_mask`` sums to non-zero, sliced out."""
        dim = _container_dim(self, t)
        others = [d for d in range(t.dim()) if d != dim]
        alive = default_mask.sum(dim=others) != 0
        new_mask = default_mask.to(dtype=t.dtype, copy=True)
        if not is_concrete(t) or not is_concrete(alive):
            keep = methods.ln_structured(
                t, as_core_amount(self.amount), self.n, _as_dim(self.dim), mask=default_mask != 0
            )
            return new_mask.mul_(as_dtype(keep, t.dtype))
        slc = tuple(alive if d == dim else slice(None) for d in range(t.dim()))
        piece = t.detach()[slc]  # the slice torch computes the norms on (same values, same layout, same numbers)
        k = self._checked_count(piece)
        if k == 0:
            return new_mask
        norm = compute_norm(piece, self.n, self.dim)
        if norm.shape != (piece.shape[self.dim],):
            return _sliced_mask(self, t, default_mask)
        kept = torch_order_select(norm, piece.shape[self.dim] - k, largest=True)
        factor = torch.ones_like(alive).masked_scatter_(alive, kept)  # dead channels keep their values
        return new_mask.mul_(_channel_view(factor.to(t.dtype), t, dim))

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, amount, n, dim, importance_scores=None):  # type: ignore[override]
        return super().apply(module, name, amount=amount, n=n, dim=dim, importance_scores=importance_scores)


def _container_dim(method, t) -> int:
    """torch's container's reading of a structured method's ``dim`` (errors included)."""
    dim = method.dim + t.dim() if method.dim < 0 else int(method.dim)
    if dim < 0:
        raise IndexError(f"Index is out of bounds for tensor with dimensions {t.dim()}")
    return dim


def _channel_view(channels: torch.Tensor, t: torch.Tensor, dim) -> torch.Tensor:
    """A per-channel vector along ``dim``, viewed to broadcast against ``t``."""
    view = [1] * t.dim()
    view[int(dim)] = -1
    return channels.view(view)


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
            raise AssertionError(
                f"default_mask shape {default_mask.shape} must match self.mask shape {self.mask.shape}"
            )
        mask = self.mask
        cast = as_dtype(mask, default_mask.dtype) if mask.dtype == torch.bool else mask.to(dtype=default_mask.dtype)
        if _module.is_all_ones(default_mask) and cast.shape == default_mask.shape:
            return cast if cast is not mask else cast.clone()  # x * 1 == x: skip the product
        if cast is mask:
            return default_mask * cast
        return cast.mul_(default_mask) if cast.shape == default_mask.shape else default_mask * cast

    @classmethod
    # torch's own subclasses narrow apply's arguments too
    def apply(cls, module, name, mask):  # type: ignore[override]
        hook = super().apply(module, name, mask=mask)
        method = hook[-1] if isinstance(hook, _torch_prune.PruningContainer) else hook
        method.mask = module._buffers[name + "_mask"]
        return hook


_module.register_builtin_compute(L1Unstructured, LnStructured)
_module.register_read_only_default(
    Identity, RandomUnstructured, L1Unstructured, RandomStructured, LnStructured, CustomFromMask
)
