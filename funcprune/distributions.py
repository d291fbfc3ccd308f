"""How a global sparsity target is spread over the leaves of a params tree.

A distribution reads only the leaves' shapes (so ``meta`` params work) and returns a tree shaped
like ``params`` holding, for every covered leaf, the fraction of its entries to prune (a float in
``[0, 1]``). Leaves it does not cover are omitted, like a masks tree. :func:`prune_by` feeds such a
tree to any core mask function, and :func:`to_counts` rounds it to entry counts whose total is
exact. DTensor params work as they are (their shapes are global); :func:`prune_by` gives their
masks as the method does (see :mod:`funcprune.methods`).

Which leaves are covered: ``include`` (default: every leaf with 2+ dims, i.e. Linear/Conv weights
but no biases or norm scales) minus ``exclude``; ``overrides`` pins the sparsity of some of them.
The global target counts every covered leaf, overridden ones included: the others absorb the
difference, so ``sum(sparsity_l * numel_l) == sparsity * sum(numel_l)`` up to float rounding.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import _amount, _backend, _pytree
from ._amount import check_fraction
from ._errors import unknown_names
from ._pytree import Include, Tree
from .select import as_keep

__all__ = ["uniform", "erk", "to_counts", "prune_by"]


def _covered(params: Tree, include: Include, exclude: Include, overrides: Mapping[str, float] | None):
    """Named leaves covered, and the checked overrides, in flattening order."""
    named = _pytree.named_leaves(params)
    if include is None:
        include = lambda name, leaf: leaf.dim() >= 2  # noqa: E731
    names = _pytree.selected(named, include)
    dropped = set(_pytree.selected(named, exclude)) if exclude is not None else set()
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if name not in named]
    if unknown:
        raise unknown_names(unknown, named, "overrides")
    fixed = {name: check_fraction(value, f"override for {name}") for name, value in overrides.items()}
    names = [name for name in named if (name in names and name not in dropped) or name in fixed]
    if not names:
        raise ValueError("the distribution covers no leaf: check include/exclude")
    return named, names, fixed


def _free_budget(named, names, fixed, sparsity: float) -> float:
    """Entries the non-overridden leaves must keep so the covered leaves meet ``sparsity``."""
    total = sum(named[name].numel() for name in names)
    return (1.0 - sparsity) * total - sum((1.0 - s) * named[name].numel() for name, s in fixed.items())


def _infeasible(sparsity: float, kept: float, free: int) -> ValueError:
    return ValueError(
        f"sparsity={sparsity} cannot be met: the leaves without overrides would have to keep "
        f"{kept:.6g} of their {free} entries (density outside [0, 1])"
    )


def _tolerance(total: int) -> float:
    return 1e-9 * max(total, 1)


def uniform(
    params: Tree,
    sparsity: float,
    *,
    include: Include = None,
    exclude: Include = None,
    overrides: Mapping[str, float] | None = None,
) -> Tree:
    """The same sparsity for every covered leaf (but those in ``overrides``).

    Args:
      params: pytree of tensors (only shapes are read).
      sparsity: global fraction of covered entries to prune.
      include: leaves covered (None: those with 2+ dims; a predicate ``(name, leaf)``; or names).
      exclude: leaves removed from ``include`` (a predicate or names).
      overrides: ``{name: sparsity}`` pinned per leaf; the rest share the remaining budget.

    Returns:
      A tree like ``params`` with a float sparsity per covered leaf.

    Raises:
      KeyError: unknown names. ValueError: a fraction outside ``[0, 1]``, or overrides that make
      the target unreachable.

    Example:
      >>> params = {"a.weight": torch.zeros(4, 4), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 8)}
      >>> uniform(params, 0.5, overrides={"b.weight": 0.25})
      {'a.weight': 0.75, 'b.weight': 0.25}
    """
    sparsity = check_fraction(sparsity, "sparsity")
    named, names, fixed = _covered(params, include, exclude, overrides)
    free = [name for name in names if name not in fixed]
    free_total = sum(named[name].numel() for name in free)
    kept = _free_budget(named, names, fixed, sparsity)
    if not -_tolerance(free_total) <= kept <= free_total + _tolerance(free_total):
        raise _infeasible(sparsity, kept, free_total)
    shared = 1.0 - kept / free_total if free_total else 0.0
    out = {name: fixed[name] if name in fixed else min(max(shared, 0.0), 1.0) for name in names}
    return _pytree.like(params, out)


def _erk_raw(shape, kernel: bool, power: float) -> float:
    if math.prod(shape) == 0:
        return 0.0  # an empty leaf keeps nothing and costs nothing
    if kernel or len(shape) < 2:
        raw = sum(shape) / math.prod(shape)
    else:
        raw = (shape[0] + shape[1]) / (shape[0] * shape[1])
    return raw**power


def erk(
    params: Tree,
    sparsity: float,
    *,
    include: Include = None,
    exclude: Include = None,
    overrides: Mapping[str, float] | None = None,
    kernel: bool = True,
    power: float = 1.0,
) -> Tree:
    """Erdős–Rényi(-Kernel) sparsities: density proportional to ``sum(shape) / prod(shape)``.

    As in RigL (Evci et al., 2020): leaf ``l`` keeps a fraction ``eps * raw_l`` of its entries with
    ``raw_l = (sum(shape_l) / prod(shape_l)) ** power`` (ERK) or ``(out + in) / (out * in)`` of the
    first two dims (ER, ``kernel=False``). ``eps`` is solved so the covered leaves meet
    ``sparsity`` exactly; a leaf whose density would exceed 1 is kept dense and ``eps`` is solved
    again for the rest, until every density is at most 1.

    Args:
      params: pytree of tensors (only shapes are read).
      sparsity: global fraction of covered entries to prune.
      include, exclude, overrides: as in :func:`uniform`.
      kernel: ERK (all dims) if True, else ER (first two dims).
      power: exponent applied to ``raw_l`` (``erk_power_scale`` in RigL; 0 gives uniform).

    Returns:
      A tree like ``params`` with a float sparsity per covered leaf.

    Raises:
      KeyError: unknown names. ValueError: a fraction outside ``[0, 1]``, or a target the free
      leaves cannot meet even fully dense or fully pruned.

    Example:
      >>> params = {"small": torch.zeros(4, 4), "big": torch.zeros(64, 64)}
      >>> {name: round(s, 4) for name, s in erk(params, 0.9).items()}
      {'small': 0.0, 'big': 0.9035}
    """
    sparsity = check_fraction(sparsity, "sparsity")
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or power < 0:
        raise ValueError(f"power must be a non-negative number, got {power!r}")
    named, names, fixed = _covered(params, include, exclude, overrides)
    free = [name for name in names if name not in fixed]
    sizes = {name: named[name].numel() for name in free}
    kept = _free_budget(named, names, fixed, sparsity)
    free_total = sum(sizes.values())
    if not -_tolerance(free_total) <= kept <= free_total + _tolerance(free_total):
        raise _infeasible(sparsity, kept, free_total)
    raw = {name: _erk_raw(tuple(named[name].shape), kernel, power) for name in free}
    dense: set = set()
    eps = 0.0
    while True:
        rest = [name for name in free if name not in dense]
        if not rest:
            break
        budget = kept - sum(sizes[name] for name in dense)
        weight = sum(raw[name] * sizes[name] for name in rest)
        if weight == 0:
            break
        eps = budget / weight
        top = max(raw[name] for name in rest)
        if eps * top <= 1.0:
            break
        dense.update(name for name in rest if raw[name] == top)
    out = {}
    for name in names:
        if name in fixed:
            out[name] = fixed[name]
        elif name in dense or sizes[name] == 0:
            out[name] = 0.0
        else:
            out[name] = min(max(1.0 - eps * raw[name], 0.0), 1.0)
    return _pytree.like(params, out)


def to_counts(params: Tree, sparsities: Tree) -> Tree:
    """Round per-leaf sparsities to entry counts whose sum is the rounded global count.

    Largest-remainder rounding: every leaf prunes ``floor(s_l * n_l)`` or one more, and the total
    is ``round(sum(s_l * n_l))``, so a distribution's global target survives the rounding
    (rounding each leaf on its own can be off by up to half an entry per leaf).

    Example:
      >>> to_counts({"a": torch.zeros(3), "b": torch.zeros(3)}, {"a": 0.5, "b": 0.5})
      {'a': 2, 'b': 1}
    """
    named = _pytree.named_leaves(params)
    wanted = _pytree.lookup(named, sparsities, "sparsities")
    exact = {name: check_fraction(s, f"sparsity of {name}") * named[name].numel() for name, s in wanted.items()}
    counts = {name: math.floor(value) for name, value in exact.items()}
    extra = round(sum(exact.values())) - sum(counts.values())
    by_remainder = sorted(exact, key=lambda name: (-(exact[name] - counts[name]), list(exact).index(name)))
    for name in by_remainder[: max(extra, 0)]:
        counts[name] += 1
    return _pytree.like(params, counts)


def _to_go(leaf: torch.Tensor, target, keep: torch.Tensor | None):
    """Entries still to prune so ``leaf`` reaches ``target`` (a sparsity or an int count)."""
    wanted = (
        target
        if isinstance(target, int) and not isinstance(target, bool)
        else round(check_fraction(target, "target sparsity") * leaf.numel())
    )
    if wanted > leaf.numel():
        raise ValueError(f"target count {wanted} exceeds the {leaf.numel()} entries")
    if keep is None:
        return wanted
    pruned = leaf.numel() - _backend.kept_count(keep)  # a DTensor's: summed across its mesh
    if isinstance(pruned, int):
        return max(wanted - pruned, 0)
    return (wanted - pruned).clamp(min=0)


def prune_by(
    params: Tree,
    method: Callable[..., torch.Tensor],
    amounts: Tree,
    *args: Any,
    masks: Tree | None = None,
    scores: Tree | None = None,
    target: bool = False,
    **kwargs: Any,
) -> Tree:
    """Prune each leaf of ``amounts`` as :func:`funcprune.prune` would, each with its own amount.

    Args:
      params: pytree of tensors.
      method: a tensor-level mask function, called as ``method(scores, amount, *args, mask=...)``.
      amounts: a tree over some of the names (e.g. from :func:`erk`), one amount per leaf.
      masks: existing masks; scores: optional importance scores (both over some of the names).
      target: if False, each amount is the core's (a fraction of the survivors, or a count). If
        True, each is a *target* sparsity of the whole leaf (or a target count of pruned entries)
        and the leaf prunes what is still missing, so calling this step after step with a growing
        schedule lands exactly on ``round(s_l * n_l)``; this needs an unstructured ``method``.
      **kwargs: passed to ``method``.

    Returns:
      New masks for every leaf in ``amounts`` (and the earlier masks of the others).

    Example:
      >>> import funcprune as fp
      >>> params = {"w": torch.arange(1.0, 5.0), "v": torch.arange(1.0, 5.0)}
      >>> m = prune_by(params, fp.l1_unstructured, {"w": 0.25, "v": 0.5})
      >>> prune_by(params, fp.l1_unstructured, {"w": 0.5, "v": 0.5}, masks=m, target=True)
      {'w': tensor([False, False,  True,  True]), 'v': tensor([False, False,  True,  True])}
    """
    named = _pytree.named_leaves(params)
    per_leaf = _pytree.lookup(named, amounts, "amounts")

    def step(name: str, leaf_scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        amount = per_leaf[name]
        if target:
            amount = _to_go(named[name], amount, as_keep(named[name], mask))
        else:
            _amount.validate_amount(amount)
        return method(leaf_scores, amount, *args, mask=mask, **kwargs)

    return _pytree.per_leaf(params, step, masks=masks, scores=scores, include=list(per_leaf))
