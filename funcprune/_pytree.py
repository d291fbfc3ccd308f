"""Pytree plumbing: trees of tensors seen as ``{qualified name: leaf}`` and back.

A leaf's name joins its optree path with dots, so ``{"conv1.weight": w}`` and
``{"conv1": {"weight": w}}`` both name ``w`` ``"conv1.weight"`` -- the names of
``named_parameters()``. Masks trees may cover only some params: missing dict keys and ``None``
holes both mean "no mask".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import optree
import torch

from . import _dtensor
from ._errors import shape_mismatch, unknown_names

Tree = Any
Include = None | Callable[[str, torch.Tensor], bool] | Iterable[str]


_NAMESPACE = "funcprune"


def _flatten(tree: Tree):
    """optree's flatten, but dicts in insertion order (optree sorts keys by default), so leaves come
    in ``named_parameters()`` order: random draws and tie-breaking then follow torch's order."""
    with optree.dict_insertion_ordered(True, namespace=_NAMESPACE):
        return optree.tree_flatten_with_path(tree, namespace=_NAMESPACE)


def _names(paths) -> list:
    """Dotted names of optree paths; two paths with one name (``{"x.y": a, "x": {"y": b}}``,
    ``{0: a, "0": b}``) would give both leaves one mask, so they raise."""
    names = [".".join(str(p) for p in path) for path in paths]
    if len(set(names)) != len(names):
        seen: dict[str, Any] = {}
        clashes = []
        for name, path in zip(names, paths):
            if name in seen:
                clashes.append(f"{name!r} (paths {seen[name]!r} and {path!r})")
            seen.setdefault(name, path)
        raise ValueError(
            f"leaf names collide: {', '.join(clashes)}; funcprune names a leaf by its path "
            f"joined with dots, so rename the keys"
        )
    return names


def named_leaves(tree: Tree) -> dict[str, Any]:
    """``{qualified name: leaf}`` in insertion order (``None`` is a hole, not a leaf).

    Raises:
      ValueError: two leaves whose paths give one name (``{"x.y": a, "x": {"y": b}}``, ``{0: a, "0": b}``).
    """
    paths, leaves, _ = _flatten(tree)
    return dict(zip(_names(paths), leaves))


def _strip_holes(tree: Tree) -> Tree:
    if isinstance(tree, Mapping):
        items = ((k, _strip_holes(v)) for k, v in tree.items())
        kept = [(k, v) for k, v in items if v is not None and not (isinstance(v, Mapping) and not v)]
        try:
            return cast(Any, type(tree))(kept)  # the mapping's own class (OrderedDict, ...), else a dict
        except TypeError:
            return dict(kept)
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_strip_holes(v) for v in tree)
    return tree


def like(params: Tree, named: Mapping[str, Any]) -> Tree:
    """A tree shaped like ``params`` holding ``named[name]`` at each leaf; dicts omit missing names."""
    paths, _, spec = _flatten(params)
    names = _names(paths)
    return _strip_holes(optree.tree_unflatten(spec, [named.get(name) for name in names]))


def lookup(params: Mapping[str, Any], tree: Tree | None, what: str) -> dict[str, Any]:
    """``named_leaves(tree)``, raising ``KeyError`` for a name that is not among ``params``."""
    if tree is None:
        return {}
    named = named_leaves(tree)
    unknown = [name for name in named if name not in params]
    if unknown:
        raise unknown_names(unknown, params, what)
    return named


def selected(params: Mapping[str, torch.Tensor], include: Include) -> list:
    """Names picked by ``include``: None (all), a predicate ``(name, leaf) -> bool``, or names."""
    if include is None:
        return list(params)
    if callable(include):
        return [name for name, leaf in params.items() if include(name, leaf)]
    if isinstance(include, str):
        include = [include]
    wanted = list(include)
    unknown = [name for name in wanted if name not in params]
    if unknown:
        raise unknown_names(unknown, params, "include")
    return [name for name in params if name in set(wanted)]


def named_error(name: str, err: Exception) -> Exception:
    """The same exception type, its message prefixed with the offending leaf's name."""
    if type(err) in (ValueError, TypeError, IndexError, KeyError):
        return type(err)(f"{name}: {err.args[0] if err.args else err}")
    return err


def check_like(name: str, leaf: Any, param: torch.Tensor, what: str, of: str = "param") -> None:
    """Raise unless ``leaf`` (a mask, scores, ...) is a tensor of ``param``'s shape, naming the leaf.

    Raises:
      TypeError: ``leaf`` is not a tensor. ValueError: its shape is not ``param``'s.
    """
    if not isinstance(leaf, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a tensor, got {type(leaf).__name__}")
    if leaf.shape != param.shape:
        raise shape_mismatch(what, leaf.shape, f"the {of}", param.shape, name=name)


def scores_for(named: dict[str, torch.Tensor], scores: Tree | None) -> dict[str, torch.Tensor]:
    """Importance scores by name, each checked against its param's shape (torch raises there too)."""
    named_scores = lookup(named, scores, "scores")
    check_dtensors(named_scores)
    for name, leaf in named_scores.items():
        check_like(name, leaf, named[name], "scores")
        named_scores[name] = _laid_out(name, leaf, named[name], "scores")
    return named_scores


def check_dtensors(named: dict[str, Any]) -> None:
    """Raise unless every DTensor among ``named``'s leaves has a supported layout (naming the leaf).

    Called at every tree entry point before anything is computed: ``Partial``, ``_StridedShard``
    and meshes of more than 2 dims are refused (see :func:`funcprune._dtensor.check_placements`).
    """
    for name, leaf in named.items():
        if _dtensor.is_dtensor(leaf):
            _dtensor.check_placements(name, leaf)


def _laid_out(name: str, leaf: torch.Tensor, param: torch.Tensor, what: str) -> torch.Tensor:
    """A DTensor mask/scores leaf laid out like its DTensor param (ValueError naming the leaf if it cannot be)."""
    if not (_dtensor.is_dtensor(leaf) or _dtensor.is_dtensor(param)):
        return leaf
    try:
        return _dtensor.aligned(leaf, param, what)
    except ValueError as err:
        raise named_error(name, err) from err


def masks_for(named: dict[str, torch.Tensor], masks: Tree | None, of: str = "param") -> dict[str, torch.Tensor]:
    """Masks by name, each checked to be a tensor of its param's shape (also those no leaf step reads)."""
    named_masks = lookup(named, masks, "masks")
    check_dtensors(named)
    check_dtensors(named_masks)
    for name, mask in named_masks.items():
        check_like(name, mask, named[name], "mask", of)
        named_masks[name] = _laid_out(name, mask, named[name], "mask")
    return named_masks


_LEAF_ERRORS = (ValueError, TypeError, IndexError, KeyError)


def per_leaf(
    params: Tree,
    step: Callable[[str, torch.Tensor, torch.Tensor | None], torch.Tensor],
    *,
    masks: Tree | None = None,
    scores: Tree | None = None,
    include: Include = None,
    finish: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], None] | None = None,
) -> Tree:
    """The tree driver of every per-leaf mask function: one lookup, one error rule, one rebuild.

    For each leaf picked by ``include`` (in ``params`` order), ``step(name, scores_leaf, old_mask)``
    returns its new mask; ``scores_leaf`` is the leaf's importance scores, or the param itself.
    ``finish(named_params, new_masks)`` may then add derived masks (e.g. a bias following its weight).

    Returns:
      A masks tree shaped like ``params``: the new masks, and the earlier masks of other leaves.

    Raises:
      KeyError: a name in ``masks``/``scores``/``include`` that is not in ``params``.
      TypeError, ValueError: a mask or scores leaf that is not a tensor of its param's shape (every
        mask given, selected or not, so every mask returned has its param's shape).
      ValueError, TypeError, IndexError, KeyError: as ``step`` raises them, prefixed with the leaf's
        name; nothing is returned half-done.
    """
    named = named_leaves(params)
    old = masks_for(named, masks)
    named_scores = scores_for(named, scores)
    new = dict(old)
    for name in selected(named, include):
        try:
            mask = step(name, named_scores.get(name, named[name]), old.get(name))
        except _LEAF_ERRORS as err:
            raise named_error(name, err) from err
        check_like(name, mask, named[name], "new mask")
        new[name] = mask
    if finish is not None:
        finish(named, new)
    return like(params, new)
