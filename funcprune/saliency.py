"""Importance scores as trees, computed with ``torch.func``: feed them to any method as ``scores``.

Every function returns a tree shaped like ``params`` (only the leaves picked by ``include``, by
default every floating leaf) of non-negative scores, larger = more important, so
``prune(params, l1_unstructured, amount, scores=s)``, ``global_unstructured(params, amount,
scores=s)`` and the structured methods all drop the least important entries.

Gradient-based scores take ``loss_fn(params, batch) -> scalar`` (typically a
:func:`funcprune.functional_call` of a model plus a loss) and differentiate it with
``torch.func.grad`` at the *masked* params, so pruned entries score zero (exactly, also where they
hold NaN or inf: they are replaced by zero, not multiplied by it). They are pure, hence
``torch.func.vmap`` over K batches (then average) or over K stacked models gives K score trees in
one call.

The optional prior ``masks`` is keyword-only, as everywhere in funcprune; passing it positionally
still works in 1.x releases before 1.3 and warns ``DeprecationWarning``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch

from . import _pytree
from ._masking import zeroed
from ._pytree import Include, Tree

LossFn = Callable[[Tree, Any], torch.Tensor]

__all__ = ["LossFn", "magnitude", "gradient", "snip", "taylor"]


F = TypeVar("F", bound=Callable[..., Tree])


def _masks_keyword_only(positional: int) -> Callable[[F], F]:
    """Take ``masks`` as the argument after the ``positional`` ones too, with a DeprecationWarning (until 1.3)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Tree:
            if len(args) > positional:
                if len(args) > positional + 1:
                    raise TypeError(
                        f"{fn.__name__}() takes {positional} positional arguments but {len(args)} "
                        f"were given (masks and include are keyword-only)"
                    )
                if "masks" in kwargs:
                    raise TypeError(f"{fn.__name__}() got masks both positionally and as masks=")
                warnings.warn(
                    f"funcprune.saliency.{fn.__name__}: passing masks positionally is deprecated and "
                    f"will be an error in 1.3; pass masks=masks",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs["masks"], args = args[positional], args[:positional]
            return fn(*args, **kwargs)

        return cast(F, call)  # fn's signature (functools.wraps), masks also accepted positionally

    return wrap


def _floating(name: str, leaf: torch.Tensor) -> bool:
    return leaf.is_floating_point()


def _pick(params: Tree, include: Include, values: dict) -> Tree:
    named = _pytree.named_leaves(params)
    names = _pytree.selected(named, _floating if include is None else include)
    return _pytree.like(params, {name: values[name] for name in names})


def _grads(loss_fn: LossFn, params: Tree, batch: Any, masks: Tree | None):
    """Named ``(effective params, dL/d effective params)`` at the masked params."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(params, batch), got {loss_fn!r}")
    # Pruned entries exactly zero (not nan * 0), so a pruned NaN/inf neither scores nor poisons the loss.
    effective = _pytree.like(params, zeroed(params, masks))
    grads = torch.func.grad(loss_fn)(effective, batch)
    return _pytree.named_leaves(effective), _pytree.named_leaves(grads)


@_masks_keyword_only(1)
def magnitude(params: Tree, *, masks: Tree | None = None, include: Include = None) -> Tree:
    """``|param|`` (exactly zero where ``masks`` pruned, whatever was there): the score of magnitude pruning.

    ``masks`` is keyword-only (positionally: ``DeprecationWarning``, an error from 1.3).

    Example:
      >>> magnitude({"w": torch.tensor([-2.0, 1.0])}, masks={"w": torch.tensor([True, False])})
      {'w': tensor([2., 0.])}
    """
    return _pick(params, include, {name: leaf.abs() for name, leaf in zeroed(params, masks).items()})


@_masks_keyword_only(3)
def gradient(loss_fn: LossFn, params: Tree, batch: Any, *, masks: Tree | None = None, include: Include = None) -> Tree:
    """``|dL/dw|`` at the masked params, dense (pruned entries too): RigL's growth criterion.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, differentiable in ``params``.
      params: pytree of tensors; batch: whatever ``loss_fn`` takes.
      masks: current masks, keyword-only (positionally: ``DeprecationWarning``, an error from 1.3).
      include: leaves to score (None: every floating leaf).

    Example:
      >>> loss = lambda p, x: (p["w"] * x).sum()
      >>> gradient(loss, {"w": torch.ones(2)}, torch.tensor([3.0, -4.0]))
      {'w': tensor([3., 4.])}
    """
    _, grads = _grads(loss_fn, params, batch, masks)
    return _pick(params, include, {name: g.abs() for name, g in grads.items()})


@_masks_keyword_only(3)
def snip(loss_fn: LossFn, params: Tree, batch: Any, *, masks: Tree | None = None, include: Include = None) -> Tree:
    """SNIP connection sensitivity ``|dL/dw * w|`` (Lee et al., 2019), at the masked params.

    ``dL/dc`` for a multiplicative gate ``c = 1`` on each weight: how much the loss moves when the
    connection is removed, to first order. Normalising by the total does not change any ranking,
    so the raw values are returned.

    ``masks`` is keyword-only (positionally: ``DeprecationWarning``, an error from 1.3).

    Example:
      >>> loss = lambda p, x: (p["w"] * x).sum()
      >>> snip(loss, {"w": torch.tensor([1.0, -2.0])}, torch.tensor([3.0, 1.0]))
      {'w': tensor([3., 2.])}
    """
    effective, grads = _grads(loss_fn, params, batch, masks)
    return _pick(params, include, {name: (grads[name] * effective[name]).abs() for name in grads})


@_masks_keyword_only(3)
def taylor(
    loss_fn: LossFn,
    params: Tree,
    batch: Any,
    *,
    masks: Tree | None = None,
    include: Include = None,
    dim: int | None = None,
) -> Tree:
    """First-order Taylor importance ``(dL/dw * w) ** 2`` (Molchanov et al., 2019).

    The squared first-order estimate of the loss change when a weight is zeroed. With ``dim``,
    the importance of each channel along ``dim`` (``(sum over the channel of dL/dw * w) ** 2``) is
    spread over its entries, ready for a structured method along the same ``dim``; leaves with
    fewer dims than ``dim`` needs get the per-entry score.

    ``masks`` is keyword-only (positionally: ``DeprecationWarning``, an error from 1.3).

    Example:
      >>> loss = lambda p, x: (p["w"] * x).sum()
      >>> taylor(loss, {"w": torch.tensor([[1.0, 2.0], [1.0, -1.0]])}, torch.ones(2, 2), dim=0)
      {'w': tensor([[9., 9.],
              [0., 0.]])}
    """
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
        raise TypeError(f"dim must be an int or None, got {dim!r}")
    effective, grads = _grads(loss_fn, params, batch, masks)
    scores = {}
    for name, g in grads.items():
        first_order = g * effective[name]
        if dim is not None and first_order.dim() >= 2 and -first_order.dim() <= dim < first_order.dim():
            others = [d for d in range(first_order.dim()) if d != dim % first_order.dim()]
            first_order = first_order.sum(dim=others, keepdim=True).expand_as(g)
        scores[name] = first_order.square()
    return _pick(params, include, scores)
