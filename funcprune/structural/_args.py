"""The argument rules shared by ``groups`` and ``shrink``: example inputs, renamed keywords, type checks."""

from __future__ import annotations

import warnings
from typing import Any

import torch

UNSET: Any = object()  # an argument not given (None is a valid value for some)


def renamed(where: str, new: Any, old: Any, new_name: str, old_name: str, default: Any) -> Any:
    """The value of a keyword renamed from ``old_name`` to ``new_name``: the old one warns (DeprecationWarning)."""
    if old is UNSET:
        return default if new is UNSET else new
    if new is not UNSET:
        raise TypeError(f"{where}: got both {new_name}= and its old name {old_name}=; pass {new_name}= only")
    warnings.warn(
        f"{where}: {old_name}= is renamed {new_name}= (torch.export's and functional_call's word); "
        f"{old_name}= stops working in the next minor release",
        DeprecationWarning,
        stacklevel=3,
    )
    return old


def as_args(args: Any) -> tuple[Any, ...]:
    """Positional inputs as functional_call takes them: a tuple is the arguments, anything else the one argument."""
    return args if isinstance(args, tuple) else (args,)


def as_kwargs(where: str, kwargs: dict[str, Any] | None) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(f"{where}: kwargs must be a dict of keyword inputs, got {type(kwargs).__name__}")
    return kwargs


def check_module(where: str, module: Any) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{where}: module must be a torch.nn.Module, got {type(module).__name__}")


def fresh(value: Any) -> Any:
    """A copy of the tensors in ``value`` (nested lists, tuples, dicts), so a forward that writes its
    inputs in place changes neither the caller's tensors nor the next run's."""
    return torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, value)
