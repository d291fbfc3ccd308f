"""Dynamic sparse training: drop-and-grow mask updates that keep the sparsity exact.

:func:`drop_and_grow` is the tensor-level step: among the surviving entries drop the
``round(drop_fraction * survivors)`` of smallest ``|weights|``, then grow as many among the
entries that are off after the drop (just-dropped ones included, as in RigL's reference code)
with the largest ``grow_scores``. Survivor counts never change. :func:`set_update` grows at random
(SET, Mocanu et al., 2018), :func:`rigl_update` by gradient magnitude (RigL, Evci et al., 2020).
The drop fraction may be a schedule (e.g. :func:`funcprune.schedules.cosine_decay`) read at
``step``. RigL initialises grown weights at zero: :func:`zero_grown` does that to the params.

Like the core methods these are pure and vmappable (random growth with
``randomness="different"``), and never read tensor values to pick a shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from . import _amount, _pytree
from ._amount import as_number
from ._pytree import Include, Tree
from .select import as_keep, count_kept, select_flat

DropFraction = float | torch.Tensor | Callable[[int], float | torch.Tensor]

__all__ = ["drop_and_grow", "set_update", "rigl_update", "zero_grown"]


def _drop_fraction_at(drop_fraction, step):
    if callable(drop_fraction):
        if step is None:
            raise ValueError("drop_fraction is a schedule: pass the current step as step=")
        drop_fraction = drop_fraction(step)
    if isinstance(drop_fraction, int) and not isinstance(drop_fraction, bool):
        raise TypeError(f"drop_fraction must be a float in [0, 1] (a fraction of the survivors), got {drop_fraction!r}")
    if isinstance(drop_fraction, torch.Tensor) and not drop_fraction.is_floating_point():
        raise TypeError(f"drop_fraction must be a floating 0-d tensor, got dtype {drop_fraction.dtype}")
    _amount.validate_amount(drop_fraction)
    return as_number(drop_fraction)


def drop_and_grow(weights: torch.Tensor, mask: torch.Tensor, drop_fraction, grow_scores: torch.Tensor) -> torch.Tensor:
    """One drop-and-grow step on one tensor: same number of survivors, different ones.

    Args:
      weights: the (dense) param; survivors of smallest ``|weights|`` are dropped.
      mask: current mask (bool or 0/1).
      drop_fraction: float in ``[0, 1]`` or floating 0-d tensor: fraction of survivors replaced.
      grow_scores: shaped like ``weights``; the off entries with the largest scores are grown.

    Returns:
      The new bool mask, with exactly as many ``True`` as ``mask``.

    Raises:
      ValueError/TypeError: a bad ``drop_fraction``, or ``mask``/``grow_scores`` of another shape.

    Example:
      >>> w = torch.tensor([0.1, 2.0, 3.0, 0.0])
      >>> drop_and_grow(w, torch.tensor([True, True, True, False]), 0.34, torch.tensor([0.0, 0.0, 0.0, 9.0]))
      tensor([False,  True,  True,  True])
    """
    drop_fraction = _drop_fraction_at(drop_fraction, None)
    keep = as_keep(weights, mask)
    if keep is None:
        raise TypeError("mask must be a tensor, got None")
    as_keep(weights, grow_scores, "grow_scores")
    n = weights.numel()
    alive = count_kept(keep)
    k = _amount.prune_count(drop_fraction, alive)
    flat_keep = keep.reshape(-1)
    dropped = select_flat(weights.detach().abs().reshape(-1), k, largest=False, alive=flat_keep, k_max=n)
    after = flat_keep & ~dropped
    grow_key = grow_scores.detach().reshape(-1)
    if not grow_key.is_floating_point():
        grow_key = grow_key.to(torch.get_default_dtype())
    grown = select_flat(grow_key, k, largest=True, alive=~after, k_max=n)
    return (after | grown).view(weights.shape)


def _update(params: Tree, masks: Tree, drop_fraction, step, include: Include, scores_of) -> Tree:
    drop_fraction = _drop_fraction_at(drop_fraction, step)
    named = _pytree.named_leaves(params)
    old = _pytree.lookup(named, masks, "masks")
    if include is None:
        include = list(old)
    missing = [name for name in _pytree.selected(named, include) if name not in old]
    if missing:
        raise KeyError(f"drop-and-grow needs a mask for every updated leaf; no mask for {missing}")

    def leaf_step(name: str, weights: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # every updated leaf has a mask: checked above
        return drop_and_grow(weights, cast(torch.Tensor, mask), drop_fraction, scores_of(name, weights))

    return _pytree.per_leaf(params, leaf_step, masks=masks, include=include)


def set_update(
    params: Tree,
    masks: Tree,
    drop_fraction: DropFraction,
    *,
    step: int | None = None,
    include: Include = None,
    generator: torch.Generator | None = None,
) -> Tree:
    """SET: drop the smallest-magnitude survivors, regrow as many entries chosen at random.

    Args:
      params: pytree of tensors; masks: current masks (only masked leaves are updated).
      drop_fraction: fraction of survivors replaced, or a schedule called at ``step``.
      step: the training step, when ``drop_fraction`` is a schedule.
      include: restrict the update to these masked leaves.
      generator: RNG for the random growth (the global RNG if None).

    Example:
      >>> masks = {"w": torch.tensor([True, True, False, False])}
      >>> new = set_update({"w": torch.tensor([1.0, 2.0, 0.0, 0.0])}, masks, 0.5)
      >>> int(new["w"].sum()), bool(new["w"][1])
      (2, True)
    """

    def scores_of(name, leaf):
        return torch.rand(leaf.shape, generator=generator, device=leaf.device)

    return _update(params, masks, drop_fraction, step, include, scores_of)


def rigl_update(
    params: Tree,
    masks: Tree,
    grads: Tree,
    drop_fraction: DropFraction,
    *,
    step: int | None = None,
    include: Include = None,
) -> Tree:
    """RigL: drop the smallest-magnitude survivors, grow the off entries of largest ``|grad|``.

    ``grads`` are dense gradients with respect to the masked params (e.g.
    :func:`funcprune.saliency.gradient`, or ``torch.func.grad`` of the loss at
    ``apply_masks(params, masks)``), so pruned entries have a growth signal.

    Example:
      >>> masks = {"w": torch.tensor([True, True, False, False])}
      >>> params = {"w": torch.tensor([1.0, 2.0, 0.0, 0.0])}
      >>> rigl_update(params, masks, {"w": torch.tensor([0.0, 0.0, 0.0, 5.0])}, 0.5)
      {'w': tensor([False,  True, False,  True])}
    """
    named_grads = _pytree.lookup(_pytree.named_leaves(params), grads, "grads")

    def scores_of(name, leaf):
        if name not in named_grads:
            raise KeyError(f"no gradient for {name}")
        return named_grads[name].abs()

    return _update(params, masks, drop_fraction, step, include, scores_of)


def zero_grown(params: Tree, old_masks: Tree, new_masks: Tree) -> Tree:
    """``params`` with the entries grown since ``old_masks`` set to zero (RigL's initialisation).

    Example:
      >>> zero_grown({"w": torch.ones(2)}, {"w": torch.tensor([True, False])}, {"w": torch.tensor([False, True])})
      {'w': tensor([1., 0.])}
    """
    named = _pytree.named_leaves(params)
    old = _pytree.lookup(named, old_masks, "old_masks")
    new = _pytree.lookup(named, new_masks, "new_masks")
    out = dict(named)
    for name, mask in new.items():
        if name in old:  # without an old mask every entry was already on: nothing grew
            grown = as_keep(named[name], mask, f"{name} new mask") & ~as_keep(
                named[name], old[name], f"{name} old mask"
            )
            out[name] = named[name].masked_fill(grown, 0)
    return _pytree.like(params, out)
