"""Pytree-level pruning: lift the tensor methods over ``(params, masks)`` trees.

Params are any optree pytree of tensors, usually ``dict(model.named_parameters())``; masks are a
tree over the same names that may cover only some of them (dicts simply omit unmasked names).
Every function returns new trees and leaves its inputs untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import _amount, _backend, _dtensor, _pytree, _radix, _sharded_channels, select
from ._amount import Amount, drop_count
from ._errors import shape_mismatch
from ._masking import masked
from ._pytree import Include, Tree, named_error, scores_for
from .methods import l1_unstructured, random_unstructured
from .select import as_keep, count_kept

__all__ = ["prune", "global_unstructured", "apply_masks", "mask_grads", "sparsity", "Sparsity"]


def prune(
    params: Tree,
    method: Callable[..., torch.Tensor],
    *args: Any,
    masks: Tree | None = None,
    scores: Tree | None = None,
    include: Include = None,
    **kwargs: Any,
) -> Tree:
    """Apply one tensor-level mask function to the selected leaves, on top of ``masks``.

    Args:
      params: pytree of tensors, e.g. ``dict(model.named_parameters())``.
      method: a tensor-level function such as :func:`funcprune.l1_unstructured`; it is called as
        ``method(scores_leaf, *args, mask=old_mask, **kwargs)``.
      masks: existing masks (a tree over some of the names) or None.
      scores: optional importance scores over some of the names (else the params are used).
      include: which leaves to prune: None (all), a predicate ``(name, leaf) -> bool``, or names.

    Returns:
      The new masks: every selected leaf gets a mask, earlier masks of other leaves are kept.

    Raises:
      KeyError: a name in ``masks``/``scores``/``include`` that is not in ``params``.
      TypeError, ValueError: a mask or scores leaf (selected or not) that is not a tensor of its
        param's shape.
      ValueError, TypeError, IndexError, KeyError: as the method raises them, prefixed with the leaf
        name; nothing is returned half-done.

    DTensor params (``Shard``/``Replicate`` on a 1-D or 2-D mesh; masks/scores laid out like them,
    or ``Replicate()`` where they are sharded) give DTensor masks laid out like the params; see
    :mod:`funcprune.methods` for what each method does there. Any other DTensor layout
    (``Partial``, ``_StridedShard``, a 3-D mesh, masks sharded unlike their param) raises ValueError
    naming the leaf before anything is computed.

    Example:
      >>> params = {"w": torch.tensor([[1.0, -2.0], [0.5, 3.0]]), "b": torch.zeros(2)}
      >>> prune(params, l1_unstructured, 0.5, include=["w"])
      {'w': tensor([[False,  True],
              [False,  True]])}
    """

    def step(name: str, leaf_scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return method(leaf_scores, *args, mask=mask, **kwargs)

    return _pytree.per_leaf(params, step, masks=masks, scores=scores, include=include)


def _common_dtype(tensors) -> torch.dtype:
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def global_unstructured(
    params: Tree,
    amount: Amount,
    *,
    masks: Tree | None = None,
    scores: Tree | None = None,
    method: str | Callable = "l1",
    include: Include = None,
    generator: torch.Generator | None = None,
    chunk_size: int = _radix.DEFAULT_CHUNK,
    stream: str | None = None,
) -> Tree:
    """Prune one ``amount`` across all selected leaves at once, as if they were one vector.

    Matches ``torch.nn.utils.prune.global_unstructured`` (with ``L1Unstructured`` or
    ``RandomUnstructured``): ``amount`` counts (or is a fraction of) the surviving entries of all
    selected leaves together, and the entries with the smallest ``|score|`` (or random ones) go.

    Unlike torch, L1 never concatenates the weights: on real tensors it finds the exact global
    threshold with a radix selection over the leaves, ``chunk_size`` entries at a time, so the
    extra memory is the bool masks plus a few chunk-sized buffers, counts are exact past 2**31
    entries, and ties at the threshold go to the earliest entry in leaf order. Under ``vmap`` or on
    ``meta`` it falls back to one selection over the concatenated keys (no data-dependent shapes).
    The random method draws what torch draws (one uniform number per entry on fresh masks, per
    surviving entry on top of ``masks``) and picks as torch's top-k does, so seeds give torch's
    masks; under ``vmap`` on top of ``masks`` it draws one number per entry (same counts, other
    entries).

    Args:
      params: pytree of tensors.
      amount: int count, float fraction of the survivors, or 0-d tensor.
      masks: existing masks over some of the names.
      scores: optional importance scores over some of the names.
      method: ``"l1"`` or ``"random"`` (or :func:`funcprune.l1_unstructured` /
        :func:`funcprune.random_unstructured`).
      include: which leaves take part (None: all; a predicate ``(name, leaf)``; or names).
      generator: RNG for ``method="random"``.
      chunk_size: largest number of entries processed at once by the L1 selection.
      stream: for ``method="random"``: ``"torch"`` (default for plain tensors: torch's draws) or
        ``"hash"`` (default and only choice for DTensors): one 63-bit seed from ``generator``, keys
        from a counter-based hash of ``(seed, global flat index)``, smallest keys pruned (ties by
        lowest index), so a one-process call reproduces a distributed mask. Not torch's stream.

    Returns:
      New masks with an entry for every selected leaf (and earlier masks of the others).

    Raises:
      ValueError: a bad ``amount``/``method``/``stream``, no leaf selected, or a selection mixing
        DTensor and plain leaves or DTensors of two meshes (naming a leaf of each).

    Example:
      >>> params = {"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, 2.0, -4.0])}
      >>> global_unstructured(params, amount=2)
      {'a': tensor([ True, False]), 'b': tensor([False,  True,  True])}
    """
    aliases: dict[Any, str] = {l1_unstructured: "l1", random_unstructured: "random"}
    method = aliases.get(method, method)
    if method not in ("l1", "random"):
        raise ValueError(f"method must be 'l1' or 'random', got {method!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    _amount.validate_amount(amount)
    named = _pytree.named_leaves(params)
    old = _pytree.masks_for(named, masks)
    named_scores = scores_for(named, scores)
    names = _pytree.selected(named, include)
    if not names:
        raise ValueError("global_unstructured needs at least one leaf to prune")
    sharded = _dtensor.split_kinds({name: named[name] for name in names}, "global_unstructured selection")
    if stream is not None and method != "random":
        raise ValueError(f"stream is for method='random' only, got stream={stream!r} with method={method!r}")
    if method == "random":  # one rule with the methods': DTensors take the hash stream only
        stream = _backend.stream(stream, named[names[0]])
    leaves = [named_scores.get(name, named[name]).detach() for name in names]
    keeps = []
    for name, leaf in zip(names, leaves):
        try:
            keeps.append(as_keep(leaf, old.get(name)))
        except (ValueError, TypeError) as err:
            raise named_error(name, err) from err
    dtype = _common_dtype(leaves)
    eager = all(_amount.is_concrete(t) for t in leaves + [keep for keep in keeps if keep is not None]) and (
        not isinstance(amount, torch.Tensor) or _amount.is_concrete(amount)
    )
    if sharded or stream == "hash" or (method == "l1" and eager):
        # the backend's global cut: radix passes over the leaves (summed across the mesh for DTensors)
        new_keeps = _backend.global_select(
            leaves, keeps, amount, method=method, dtype=dtype, generator=generator, chunk=chunk_size, names=names
        )
    else:  # torch's random stream, or under vmap/meta: the kernel's flat selection over the joined keys
        new_keeps = _flat_global(leaves, keeps, amount, method, dtype, generator)
    new = dict(old)
    new.update(zip(names, new_keeps))
    return _pytree.like(params, new)


def _flat_global(leaves, keeps, amount: Amount, method: str, dtype: torch.dtype, generator) -> list:
    """Keep masks of :func:`global_unstructured` from one :func:`funcprune.select.select_flat` over all leaves.

    torch's random draws (one number per entry on fresh masks, per survivor on top of masks: the
    same draws and the same choice as torch's container), and L1 where the radix cut cannot run
    (under ``vmap``, on ``meta``): the keys are concatenated, so no shape depends on data.
    """
    total = sum(leaf.numel() for leaf in leaves)
    alive = (
        total
        if all(keep is None for keep in keeps)
        else sum(leaf.numel() if keep is None else count_kept(keep) for leaf, keep in zip(leaves, keeps))
    )
    amount, k = drop_count(amount, alive, "parameters")
    flat_alive = (
        None
        if all(keep is None for keep in keeps)
        else torch.cat(
            [
                (torch.ones_like(leaf, dtype=torch.bool) if keep is None else keep).reshape(-1)
                for leaf, keep in zip(leaves, keeps)
            ]
        )
    )
    device = leaves[0].device
    if method == "random" and isinstance(k, int) and k == 0:
        flat = torch.ones(total, dtype=torch.bool, device=device)  # torch draws nothing when nothing is pruned
    elif method == "random" and flat_alive is not None and isinstance(alive, int):
        # torch's container draws one number per survivor, in index order, and takes its top-k
        # there: the same draws and the same choice (ties included) give torch's mask.
        draws = torch.rand(alive, generator=generator, dtype=dtype, device=device)
        chosen = select.select_flat(draws, k, largest=True)
        flat = flat_alive.clone().masked_scatter_(flat_alive, chosen.logical_not_())
    else:
        key = (
            torch.cat([leaf.reshape(-1).to(dtype=dtype, device=device).abs() for leaf in leaves])
            if method == "l1"
            else torch.rand(total, generator=generator, dtype=dtype, device=device)
        )
        flat = ~select.select_flat(
            key, k, largest=method == "random", alive=flat_alive, k_max=_amount.max_prune_count(amount, total)
        )
    if flat_alive is not None:
        flat = flat & flat_alive
    return [piece.view(leaf.shape) for piece, leaf in zip(flat.split([t.numel() for t in leaves]), leaves)]


def _map_masked(tree: Tree, masks: Tree | None, what: str) -> Tree:
    named = _pytree.named_leaves(tree)
    named_masks = _pytree.masks_for(named, masks, what)
    out = {name: _masked(leaf, named_masks[name]) if name in named_masks else leaf for name, leaf in named.items()}
    return _pytree.like(tree, out)


def _masked(leaf: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`masked` shard by shard for a DTensor (mask laid out like it): no communication."""
    if _dtensor.is_dtensor(leaf):
        return _dtensor.like_param(masked(_dtensor.local(leaf), _dtensor.local(mask)), leaf)
    return masked(leaf, mask)


def apply_masks(params: Tree, masks: Tree | None) -> Tree:
    """A copy of ``params`` with pruned entries zeroed; leaves without a mask pass through.

    Masks may be bool or floating; the result keeps each param's dtype, and gradients flow to the
    unmasked entries (zero at pruned ones) and to a float mask that requires them.

    Raises:
      KeyError: a mask name that is not in ``params``.
      TypeError: a mask that is not a tensor (naming the leaf).
      ValueError: a mask whose shape is not its param's (naming the leaf).

    Example:
      >>> apply_masks({"w": torch.ones(3)}, {"w": torch.tensor([True, False, True])})
      {'w': tensor([1., 0., 1.])}
    """
    return _map_masked(params, masks, "param")


def mask_grads(grads: Tree, masks: Tree | None) -> Tree:
    """Zero the gradients of pruned entries (leaves without a mask pass through).

    Raises:
      KeyError, TypeError, ValueError: as :func:`apply_masks` raises them.

    Example:
      >>> mask_grads({"w": torch.ones(2)}, {"w": torch.tensor([False, True])})
      {'w': tensor([0., 1.])}
    """
    return _map_masked(grads, masks, "grad")


class Sparsity(NamedTuple):
    """How much of a masks tree is pruned: tensors, so it works under ``vmap`` too.

    For K stacked masks (given with their ``params``) ``fraction``, ``pruned`` and each
    ``per_leaf`` value have shape ``(K,)``, one entry per subnetwork; otherwise they are 0-d.
    """

    fraction: torch.Tensor
    """Pruned entries over all entries counted (float)."""
    pruned: torch.Tensor
    """Number of pruned entries (int64)."""
    total: int
    """Number of entries counted (of one subnetwork, for stacked masks)."""
    per_leaf: dict[str, torch.Tensor]
    """Fraction pruned of each masked leaf, by name."""


def sparsity(masks: Tree, params: Tree | None = None) -> Sparsity:
    """Per-leaf and global fraction of pruned entries.

    Args:
      masks: a masks tree (bool or float; zero means pruned), or K masks stacked along a new
        leading dim (e.g. from :func:`funcprune.masks_for_seeds`) when ``params`` is given.
      params: if given, its unmasked leaves count as dense, so ``fraction`` is over the whole
        model, and every mask is checked against its param: a mask of shape ``(K, *param.shape)``
        is a stack of K masks, and the answer is per subnetwork (shape ``(K,)``).

    Returns:
      A :class:`Sparsity`. For DTensor masks the counts are global (summed across the mesh, one
      all-reduce per leaf), plain tensors equal on every rank.

    Raises:
      TypeError: a mask or param leaf that is not a tensor (naming the leaf).
      KeyError: a mask name that is not in ``params``.
      ValueError: a mask whose shape is neither its param's nor ``(K, *param.shape)``, or stacked
        masks that disagree on K (naming the leaf).

    Example:
      >>> s = sparsity({"w": torch.tensor([True, False, False, True])})
      >>> float(s.fraction), int(s.pruned), s.total
      (0.5, 2, 4)
      >>> stacked = {"w": torch.tensor([[True, True, True, False], [False, False, False, True]])}
      >>> sparsity(stacked, {"w": torch.zeros(4), "b": torch.zeros(4)}).fraction
      tensor([0.1250, 0.3750])
    """
    named = _pytree.named_leaves(masks)
    for name, mask in named.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}: mask must be a tensor, got {type(mask).__name__}")
    _pytree.check_dtensors(named)
    if params is None:
        total = sum(m.numel() for m in named.values())
        pruned_each = {name: _pruned(m, m.numel()) for name, m in named.items()}
        per_leaf = {name: count / max(named[name].numel(), 1) for name, count in pruned_each.items()}
        device = next(iter(named.values())).device if named else None  # the masks' device, even for no leaf counted
        pruned = sum(pruned_each.values(), torch.zeros((), dtype=torch.int64, device=device))
        return Sparsity(pruned / max(total, 1), pruned, total, per_leaf)
    named_params = _pytree.named_leaves(params)
    for name, leaf in named_params.items():
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name}: param must be a tensor, got {type(leaf).__name__}")
    _pytree.check_dtensors(named_params)
    _pytree.lookup(named_params, masks, "masks")
    size, first = None, None
    for name, mask in named.items():
        shape = named_params[name].shape
        if mask.shape == shape:
            continue
        if mask.dim() != len(shape) + 1 or mask.shape[1:] != shape:
            raise shape_mismatch(
                "mask", mask.shape, "the param", shape, name=name, note=f" (stacked masks: (K, *{tuple(shape)}))"
            )
        if size is not None and mask.shape[0] != size:
            raise ValueError(f"{name}: {mask.shape[0]} stacked masks, but {first!r} has {size}")
        size, first = mask.shape[0], name
    total = sum(p.numel() for p in named_params.values())
    pruned_each = {}
    for name, mask in named.items():
        numel = named_params[name].numel()
        if mask.shape == named_params[name].shape:
            count = _pruned(mask, numel)
            pruned_each[name] = count if size is None else count.expand(size)
        else:
            pruned_each[name] = _pruned(mask, numel, size)
    per_leaf = {name: count / max(named_params[name].numel(), 1) for name, count in pruned_each.items()}
    device = next(iter(named.values())).device if named else torch.device("cpu")
    empty = torch.zeros(() if size is None else (size,), dtype=torch.int64, device=device)
    pruned = sum(pruned_each.values(), empty)
    return Sparsity(pruned / max(total, 1), pruned, total, per_leaf)


def _pruned(mask: torch.Tensor, numel: int, size: int | None = None) -> torch.Tensor:
    """Zero entries of ``mask`` (of ``numel`` per mask; per stacked mask for ``size`` K), int64.

    A DTensor mask is counted shard by shard and summed across its mesh (replicas once): a plain
    tensor, the same on every rank.
    """
    if _dtensor.is_dtensor(mask):
        return numel - _sharded_channels.kept_count(mask, per_row=size is not None)
    dropped = mask == 0
    return dropped.sum() if size is None else dropped.reshape(size, numel).sum(dim=1)
