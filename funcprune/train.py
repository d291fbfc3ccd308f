"""Functional training with masks: masked updates and the lottery-ticket (IMP with rewinding) round.

Training keeps *dense* params and a masks tree, as ``torch.nn.utils.prune`` keeps ``weight_orig``
and ``weight_mask``. Gradients through :func:`funcprune.functional_call` are already zero at pruned
entries; :func:`funcprune.mask_grads` zeroes any other gradient tree. What an optimizer step does
to the pruned entries (weight decay, momentum) is then fixed by :func:`masked_update`:

* ``pruned="keep"``: pruned entries keep their value from before the step, like ``weight_orig``
  under plain SGD; a later, smaller mask can bring them back with their old values;
* ``pruned="zero"``: pruned entries become 0, so the dense params equal the masked ones.
"""

from __future__ import annotations

import warnings

import torch

from . import _pytree
from ._amount import Amount
from ._errors import shape_mismatch
from ._pytree import Include, Tree
from .methods import l1_unstructured
from .tree import apply_masks, global_unstructured, prune

__all__ = ["masked_update", "lottery_round"]

_POLICIES = ("keep", "zero")


def masked_update(params: Tree, updated: Tree, masks: Tree | None, *, pruned: str = "keep") -> Tree:
    """``updated`` at kept entries; at pruned entries ``params`` (``"keep"``) or 0 (``"zero"``).

    Args:
      params: the params before the optimizer step.
      updated: the params after it (same names and shapes).
      masks: masks over some of the names (bool or float, 0 = pruned); unmasked leaves take
        ``updated`` as is.
      pruned: the policy for pruned entries, ``"keep"`` or ``"zero"``.

    Returns:
      A new tree shaped like ``updated``; inputs are untouched. Differentiable, and it runs
      under ``vmap`` (stacked params, updates and masks).

    Raises:
      ValueError: for an unknown policy, or a leaf whose shapes disagree (naming it).
      KeyError: for names in ``updated`` or ``masks`` that are not in ``params``.

    Example:
      >>> before, after = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([0.5, 1.5])}
      >>> masks = {"w": torch.tensor([True, False])}
      >>> masked_update(before, after, masks)["w"], masked_update(before, after, masks, pruned="zero")["w"]
      (tensor([0.5000, 2.0000]), tensor([0.5000, 0.0000]))
    """
    if pruned not in _POLICIES:
        raise ValueError(f"pruned must be one of {_POLICIES}, got {pruned!r}")
    named = _pytree.named_leaves(params)
    new = _pytree.lookup(named, updated, "updated")
    named_masks = _pytree.lookup(named, masks, "masks")
    out = {}
    for name, value in new.items():
        mask = named_masks.get(name)
        for other, what in ((named[name], "param"), (mask, "mask")):
            if other is not None and other.shape != value.shape:
                raise shape_mismatch("the update", value.shape, f"the {what}", other.shape, name=name)
        if mask is None:
            out[name] = value
            continue
        keep = mask if mask.dtype == torch.bool else mask != 0
        fill = (
            named[name].to(value.dtype) if pruned == "keep" else torch.zeros((), dtype=value.dtype, device=value.device)
        )
        out[name] = torch.where(keep, value, fill)
    return _pytree.like(updated, out)


def lottery_round(
    trained: Tree, masks: Tree | None, rewind: Tree, amount: Amount, *, scope: str = "global", include: Include = None
) -> tuple[Tree, Tree]:
    """One round of iterative magnitude pruning with rewinding (the lottery-ticket step).

    Prunes ``amount`` of the surviving entries with the smallest ``|trained|`` (among all
    selected leaves at once for ``scope="global"``, leaf by leaf for ``"local"``) on top of
    ``masks``, then rewinds: the params restart from ``rewind`` (e.g. the initialization or an
    early checkpoint) with the new masks applied.

    Which leaves are pruned: ``include`` when given; otherwise the leaves ``masks`` covers (so a
    round after weight-only masks prunes only the weights, never the biases), or every leaf of
    ``trained`` when ``masks`` is None (or covers nothing). Pass ``include`` in the first round
    to leave leaves out from the start.

    Args:
      trained: params at the end of this round's training (their magnitudes rank the entries).
      masks: the current masks (None before the first round); they only shrink.
      rewind: params to restart from, same names as ``trained``.
      amount: fraction of the survivors (float) or count (int) to prune this round; with a
        fraction ``p``, ``r`` rounds leave ``(1 - p) ** r`` of the selected entries.
      scope: ``"global"`` (one threshold across the selected leaves) or ``"local"`` (each leaf
        on its own; ``"layer"``, the old spelling, still works for one minor release with a
        ``DeprecationWarning``).
      include: the leaves to prune, as in :func:`funcprune.prune`; None: the leaves ``masks``
        covers, or all of ``trained`` when ``masks`` is None.

    Returns:
      ``(next_masks, rewound_params)``: the masks of the next round, and ``rewind`` with the
      pruned entries zeroed (leaves without a mask are plain copies of ``rewind``).

    Raises:
      ValueError: for an unknown ``scope``, a bad ``amount``, or ``rewind`` leaves whose shapes
        differ from ``trained`` (naming the leaf).
      KeyError: for ``rewind``/``masks`` names that are not in ``trained``.

    Example:
      >>> trained = {"w": torch.tensor([0.1, -3.0, 2.0, 0.5])}
      >>> rewind = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
      >>> masks, params = lottery_round(trained, None, rewind, 0.5)
      >>> masks["w"], params["w"]
      (tensor([False,  True,  True, False]), tensor([0., 1., 1., 0.]))
    """
    if scope == "layer":
        warnings.warn(
            'lottery_round(scope="layer") is deprecated: use scope="local" (prune_groups\' word); '
            '"layer" will be removed in the next minor release',
            DeprecationWarning,
            stacklevel=2,
        )
        scope = "local"
    if scope not in ("global", "local"):
        raise ValueError(f"scope must be 'global' or 'local', got {scope!r}")
    named = _pytree.named_leaves(trained)
    named_rewind = _pytree.lookup(named, rewind, "rewind")
    covered = list(_pytree.lookup(named, masks, "masks"))
    if include is None and covered:
        include = covered  # the leaves pruned so far, no others
    for name, leaf in named.items():
        if name not in named_rewind:
            raise KeyError(f"rewind lacks {name!r}, which trained has")
        if named_rewind[name].shape != leaf.shape:
            raise shape_mismatch("rewind", named_rewind[name].shape, "trained", leaf.shape, name=name)
    if scope == "global":
        next_masks = global_unstructured(trained, amount, masks=masks, include=include)
    else:
        next_masks = prune(trained, l1_unstructured, amount, masks=masks, include=include)
    rewound = apply_masks(_pytree.like(trained, {n: t.clone() for n, t in named_rewind.items()}), next_masks)
    return next_masks, rewound
