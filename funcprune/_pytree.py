"""Pytree plumbing: trees of tensors seen as ``{qualified name: leaf}`` and back.

A leaf's name joins its optree path with dots, so ``{"conv1.weight": w}`` and
``{"conv1": {"weight": w}}`` both name ``w`` ``"conv1.weight"`` -- the names of
``named_parameters()``. Masks trees may cover only some params: missing dict keys and ``None``
holes both mean "no mask".
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union

import optree
import torch

Tree = Any
Include = Union[None, Callable[[str, torch.Tensor], bool], Iterable[str]]


_NAMESPACE = "funcprune"


def _flatten(tree: Tree):
    """optree's flatten, but dicts in insertion order (optree sorts keys by default), so leaves come
    in ``named_parameters()`` order: random draws and tie-breaking then follow torch's order."""
    with optree.dict_insertion_ordered(True, namespace=_NAMESPACE):
        return optree.tree_flatten_with_path(tree, namespace=_NAMESPACE)


def named_leaves(tree: Tree) -> Dict[str, Any]:
    """``{qualified name: leaf}`` in insertion order (``None`` is a hole, not a leaf)."""
    paths, leaves, _ = _flatten(tree)
    return {".".join(str(p) for p in path): leaf for path, leaf in zip(paths, leaves)}


def _strip_holes(tree: Tree) -> Tree:
    if isinstance(tree, Mapping):
        items = ((k, _strip_holes(v)) for k, v in tree.items())
        kept = [(k, v) for k, v in items if v is not None and not (isinstance(v, Mapping) and not v)]
        try:
            return type(tree)(kept)
        except TypeError:
            return dict(kept)
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(_strip_holes(v) for v in tree)
    return tree


def like(params: Tree, named: Mapping[str, Any]) -> Tree:
    """A tree shaped like ``params`` holding ``named[name]`` at each leaf; dicts omit missing names."""
    paths, _, spec = _flatten(params)
    names = [".".join(str(p) for p in path) for path in paths]
    return _strip_holes(optree.tree_unflatten(spec, [named.get(name) for name in names]))


def lookup(params: Mapping[str, Any], tree: Optional[Tree], what: str) -> Dict[str, Any]:
    """``named_leaves(tree)``, raising ``KeyError`` for a name that is not among ``params``."""
    if tree is None:
        return {}
    named = named_leaves(tree)
    unknown = [name for name in named if name not in params]
    if unknown:
        raise KeyError(f"{what} name(s) {unknown} are not among the params: {list(params)}")
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
        raise KeyError(f"include names {unknown} are not among the params: {list(params)}")
    return [name for name in params if name in set(wanted)]


def named_error(name: str, err: Exception) -> Exception:
    """The same exception type, its message prefixed with the offending leaf's name."""
    if type(err) in (ValueError, TypeError, IndexError, KeyError):
        return type(err)(f"{name}: {err.args[0] if err.args else err}")
    return err


def scores_for(named: Dict[str, torch.Tensor], scores: Optional[Tree]) -> Dict[str, torch.Tensor]:
    """Importance scores by name, each checked against its param's shape (torch raises there too)."""
    named_scores = lookup(named, scores, "scores")
    for name, leaf in named_scores.items():
        if leaf.shape != named[name].shape:
            raise ValueError(f"{name}: scores have shape {tuple(leaf.shape)} but the param has shape "
                             f"{tuple(named[name].shape)}")
    return named_scores
