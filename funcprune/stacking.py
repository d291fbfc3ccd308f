"""K masks at once: stack and unstack pytrees, and make K masks in one ``vmap`` of the core functions.

A *stack* of K trees is one tree of the same structure whose leaves carry a new leading dim of
size K (``stack([t0, t1])["w"][1] is t1["w"]``, values-wise). Stacked masks and stacked params
are what :func:`funcprune.stacked_call` and :func:`funcprune.vmap_stacked` run K subnetworks on.

The ``masks_for_*`` functions make K masks with no Python loop over K: each is one
``torch.func.vmap`` of :func:`funcprune.prune` (for a tensor method such as
:func:`funcprune.l1_unstructured`) or of :func:`funcprune.global_unstructured`.

DTensor params (functorch transforms do not take DTensors) go through an eager loop over the K
masks instead; the result is stacked DTensor masks (dim 0 the stack, each ``Shard(d)`` of the
params becoming ``Shard(d + 1)``). Random methods then use the hash stream (one seed per mask from
the global RNG), not the stream of the ``vmap`` path.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, cast

import optree
import torch

from . import _amount, _backend, _pytree
from ._errors import shape_mismatch
from ._pytree import Include, Tree
from .tree import global_unstructured, prune

__all__ = ["stack", "unstack", "stack_size", "masks_for_amounts", "masks_for_seeds", "masks_for_scores"]

Amounts = Sequence[int | float] | torch.Tensor


def stack(trees: Sequence[Tree]) -> Tree:
    """One tree whose leaves stack the leaves of ``trees`` along a new leading dim.

    Args:
      trees: K >= 1 trees with the same structure, names, shapes and dtypes.

    Returns:
      A tree shaped like ``trees[0]`` with leaves of shape ``(K, *leaf.shape)``.

    Raises:
      ValueError: for no trees, or a tree whose names, shapes or dtypes differ from the first;
        the message names the tree index and the offending leaf.

    Example:
      >>> s = stack([{"w": torch.zeros(2)}, {"w": torch.ones(2)}])
      >>> s["w"]
      tensor([[0., 0.],
              [1., 1.]])
    """
    trees = list(trees)
    if not trees:
        raise ValueError("stack needs at least one tree")
    first = _pytree.named_leaves(trees[0])
    for index, tree in enumerate(trees[1:], start=1):
        _check_same(first, _pytree.named_leaves(tree), index)
    leaves = [optree.tree_leaves(tree) for tree in trees]
    spec = optree.tree_structure(trees[0])
    return optree.tree_unflatten(spec, [torch.stack(column) for column in zip(*leaves)])


def _check_same(first: dict, other: dict, index: int) -> None:
    if list(other) != list(first):
        missing = [name for name in first if name not in other]
        extra = [name for name in other if name not in first]
        raise ValueError(
            f"stack: tree {index} has different leaves than tree 0: missing {missing}, extra {extra}"
            if missing or extra
            else f"stack: tree {index} orders its leaves differently from tree 0"
        )
    for name, leaf in other.items():
        ref = first[name]
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(f"stack: tree {index} leaf {name!r} is a {type(leaf).__name__}, not a tensor")
        if leaf.shape != ref.shape or leaf.dtype != ref.dtype:
            raise ValueError(
                f"stack: tree {index} leaf {name!r} has shape {tuple(leaf.shape)} and dtype "
                f"{leaf.dtype}, but tree 0 has shape {tuple(ref.shape)} and dtype {ref.dtype}"
            )


def unstack(tree: Tree) -> list[Tree]:
    """The K trees of a stacked tree (views into its leaves), the inverse of :func:`stack`.

    Raises:
      ValueError: for an empty tree, or leaves whose leading dims differ (naming the leaf).

    Example:
      >>> [t["w"] for t in unstack({"w": torch.tensor([[1, 2], [3, 4]])})]
      [tensor([1, 2]), tensor([3, 4])]
    """
    return [optree.tree_map(lambda leaf: leaf[k], tree) for k in range(stack_size(tree))]


def stack_size(tree: Tree) -> int:
    """K, the leading dim shared by every leaf of a stacked tree.

    Raises:
      ValueError: for a tree without leaves, a 0-d leaf, or leaves with different leading dims.

    Example:
      >>> stack_size({"a": torch.zeros(3, 2), "b": torch.zeros(3)})
      3
    """
    named = _pytree.named_leaves(tree)
    if not named:
        raise ValueError("a stacked tree needs at least one leaf")
    sizes = {}
    for name, leaf in named.items():
        if leaf.dim() == 0:
            raise ValueError(f"stacked leaf {name!r} is 0-d: it has no stack dim")
        sizes[name] = leaf.shape[0]
    first_name, size = next(iter(sizes.items()))
    for name, other in sizes.items():
        if other != size:
            raise ValueError(f"stacked leaf {name!r} has leading dim {other}, but {first_name!r} has {size}")
    return size


def _device_of(params: Tree) -> torch.device:
    leaves = optree.tree_leaves(params)
    return leaves[0].device if leaves else torch.device("cpu")


def _amounts_tensor(amounts: Amounts, device: torch.device) -> torch.Tensor:
    """K amounts as a 1-D int64 (counts) or float64 (fractions) tensor on ``device``, validated like torch."""
    if isinstance(amounts, torch.Tensor):
        if amounts.dim() != 1 or amounts.numel() == 0:
            raise ValueError(f"amounts must be a non-empty 1-D tensor, got shape {tuple(amounts.shape)}")
        values = amounts.tolist()
    else:
        values = list(amounts)
        if not values:
            raise ValueError("amounts must not be empty")
    for value in values:
        _amount.validate_amount(value)
    kinds = {isinstance(value, numbers.Integral) for value in values}
    if len(kinds) > 1:
        raise TypeError(f"amounts mixes counts (int) and fractions (float): {values}")
    if isinstance(amounts, torch.Tensor):
        return amounts.to(device)
    return torch.tensor(values, dtype=torch.int64 if kinds == {True} else torch.float64, device=device)


def _sharded(params: Tree) -> bool:
    return _backend.any_sharded(optree.tree_leaves(params))


def _stacked_masks(trees: list[Tree]) -> Tree:
    """K masks trees (DTensor leaves) stacked along a new dim 0, locally: the eager loop's :func:`stack`."""
    named = [_pytree.named_leaves(tree) for tree in trees]
    out = {name: _backend.stacked([n[name] for n in named]) for name, leaf in named[0].items()}
    return _pytree.like(trees[0], out)


def _pruner(
    params: Tree, method: Callable, args: tuple, masks: Tree | None, include: Include, kwargs: dict
) -> Callable[[Any, Tree | None], Tree]:
    """``(amount, scores) -> masks``: ``method`` lifted to trees by :func:`prune` or used as is."""
    if method is global_unstructured:
        return lambda amount, scores: global_unstructured(
            params, amount, masks=masks, scores=scores, include=include, **kwargs
        )
    return lambda amount, scores: prune(
        params, method, amount, *args, masks=masks, scores=scores, include=include, **kwargs
    )


def _check_counts(run: Callable, amounts: torch.Tensor, scores: Tree | None) -> None:
    """Eager-only validation: the largest int count must not exceed what is left (torch's error).

    Under ``vmap`` an oversized count would silently prune everything, so it is tried eagerly once.
    """
    if amounts.dtype.is_floating_point or not _amount.is_concrete(amounts):
        return
    if scores is not None:
        scores = unstack(scores)[0]
    run(int(amounts.max()), scores)


def masks_for_amounts(
    params: Tree,
    method: Callable,
    amounts: Amounts,
    *args: Any,
    masks: Tree | None = None,
    scores: Tree | None = None,
    include: Include = None,
    **kwargs: Any,
) -> Tree:
    """K masks, one per amount (a sparsity sweep), in one ``vmap``.

    Mask ``k`` equals ``prune(params, method, amounts[k], *args, ...)`` (or
    ``global_unstructured(params, amounts[k], masks=masks, ...)`` when ``method`` is
    :func:`funcprune.global_unstructured`), up to the choice among tied scores.

    Args:
      params: pytree of tensors.
      method: a tensor method whose first argument after the scores is the amount
        (:func:`funcprune.l1_unstructured`, :func:`funcprune.ln_structured`, ...), or
        :func:`funcprune.global_unstructured`.
      amounts: K ints (counts) or K floats (fractions), or a 1-D tensor of them.
      *args: the method's other positional arguments (e.g. ``n, dim`` of ``ln_structured``).
      masks: existing (unstacked) masks that every new mask builds on.
      scores: optional (unstacked) importance scores.
      include: which leaves to prune, as in :func:`funcprune.prune`.
      **kwargs: further keyword arguments of the method.

    Returns:
      Stacked masks: each leaf has a leading dim of size K.

    Raises:
      TypeError, ValueError: for a bad amount (as torch raises it) or a mix of ints and floats;
        an int larger than what is left to prune raises as in an eager call.

    Example:
      >>> from funcprune import l1_unstructured
      >>> params = {"w": torch.tensor([0.3, -2.0, 1.0, 0.1])}
      >>> masks_for_amounts(params, l1_unstructured, [0.25, 0.5])["w"]
      tensor([[ True,  True,  True, False],
              [False,  True,  True, False]])
    """
    amounts = _amounts_tensor(amounts, _device_of(params))
    run = _pruner(params, method, args, masks, include, kwargs)
    if _sharded(params):
        return _stacked_masks([run(_amount.as_number(amount), scores) for amount in amounts])
    _check_counts(run, amounts, None)
    return torch.func.vmap(lambda amount: run(amount, scores))(amounts)


def masks_for_seeds(
    params: Tree,
    method: Callable,
    num: int,
    *args: Any,
    masks: Tree | None = None,
    include: Include = None,
    **kwargs: Any,
) -> Tree:
    """``num`` independent random masks in one ``vmap(randomness="different")``.

    The draws come from the global RNG: after ``torch.manual_seed(s)`` mask ``k`` is the mask the
    method makes from ``torch.rand(num, *shape)[k]`` (the draws torch makes for ``num`` stacked
    tensors), so a seed reproduces all K masks.

    Args:
      params: pytree of tensors.
      method: a random method (:func:`funcprune.random_unstructured`,
        :func:`funcprune.random_structured`) or :func:`funcprune.global_unstructured` (which
        then draws with its ``method="random"``).
      num: K, the number of masks.
      *args: the method's positional arguments after the scores (the amount first).
      masks, include, **kwargs: as in :func:`funcprune.prune`; a ``generator`` is not supported.

    Raises:
      ValueError: for ``num < 1`` or a ``generator`` keyword.

    Example:
      >>> from funcprune import random_unstructured
      >>> _ = torch.manual_seed(0)
      >>> m = masks_for_seeds({"w": torch.zeros(10)}, random_unstructured, 4, 0.3)["w"]
      >>> m.shape, m.sum(dim=1).tolist()
      (torch.Size([4, 10]), [7, 7, 7, 7])
    """
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive int, got {num!r}")
    if kwargs.get("generator") is not None:
        raise ValueError("masks_for_seeds draws from the global RNG under vmap; a generator is not supported")
    if method is global_unstructured:
        amount, rest = (args[0], args[1:]) if args else (kwargs.pop("amount"), ())
        run = _pruner(params, method, rest, masks, include, {**kwargs, "method": "random"})
        one = lambda _: run(amount, None)  # noqa: E731
    else:
        one = lambda _: prune(params, method, *args, masks=masks, include=include, **kwargs)  # noqa: E731
    if _sharded(params):
        return _stacked_masks([one(k) for k in range(num)])
    return torch.func.vmap(one, randomness="different")(torch.arange(num))


def masks_for_scores(
    params: Tree,
    method: Callable,
    scores: Tree,
    amount: Amounts | int | float,
    *args: Any,
    masks: Tree | None = None,
    include: Include = None,
    **kwargs: Any,
) -> Tree:
    """K masks from K stacked importance-score trees, in one ``vmap``.

    Mask ``k`` equals ``prune(params, method, amount_k, *args, scores=unstack(scores)[k], ...)``
    (or the :func:`funcprune.global_unstructured` call) where ``amount_k`` is ``amount`` or, for a
    sequence of K amounts, its ``k``-th entry.

    Args:
      params: pytree of tensors (unstacked: it gives names and shapes).
      method: as in :func:`masks_for_amounts`.
      scores: stacked scores over some of the names (leading dim K), e.g. ``stack`` of K
        saliency trees, or stacked params for magnitude masks of K models.
      amount: one amount for all K, or K amounts.
      *args, masks, include, **kwargs: as in :func:`masks_for_amounts`.

    Raises:
      ValueError: for stacked scores whose leaves disagree on K or on shape (naming the leaf),
        or a number of amounts that is not K.

    Example:
      >>> from funcprune import l1_unstructured
      >>> params = {"w": torch.zeros(3)}
      >>> scores = {"w": torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])}
      >>> masks_for_scores(params, l1_unstructured, scores, 1)["w"]
      tensor([[False,  True,  True],
              [ True,  True, False]])
    """
    size = stack_size(scores)
    named = _pytree.named_leaves(params)
    for name, leaf in _pytree.lookup(named, scores, "scores").items():
        if leaf.shape[1:] != named[name].shape:
            raise shape_mismatch(f"scores leaf {name!r}", leaf.shape, None, f"({size}, *{tuple(named[name].shape)})")
    batched = not isinstance(amount, (numbers.Number, torch.Tensor)) or (
        isinstance(amount, torch.Tensor) and amount.dim() == 1
    )
    run = _pruner(params, method, args, masks, include, kwargs)
    if _sharded(params):
        amounts = (
            [amount] * size
            if not batched
            else [_amount.as_number(a) for a in _amounts_tensor(cast(Amounts, amount), _device_of(params))]
        )
        if len(amounts) != size:
            raise ValueError(f"got {len(amounts)} amounts for {size} stacked score trees")
        pick = lambda k: optree.tree_map(  # noqa: E731
            lambda leaf: _backend.unstacked(leaf, k), scores
        )
        return _stacked_masks([run(amounts[k], pick(k)) for k in range(size)])
    if not batched:
        _amount.validate_amount(cast(_amount.Amount, amount))  # not batched: a number or a 0-d tensor
        if isinstance(amount, numbers.Integral):
            _check_counts(run, torch.tensor([amount]), scores)
        return torch.func.vmap(lambda s: run(amount, s))(scores)
    per_tree = _amounts_tensor(cast(Amounts, amount), _device_of(params))  # batched: a sequence or 1-D tensor
    if per_tree.numel() != size:
        raise ValueError(f"got {per_tree.numel()} amounts for {size} stacked score trees")
    _check_counts(run, per_tree, scores)
    return torch.func.vmap(run)(per_tree, scores)
