"""How many entries (or channels) an ``amount`` prunes, with torch.nn.utils.prune's rules.

An ``amount`` is either an ``int`` (an absolute count) or a ``float`` in ``[0, 1]`` (a fraction
of what is still unpruned, rounded with Python's ``round``, i.e. half to even).  funcprune also
accepts a 0-d tensor, so a sparsity sweep can be one ``vmap`` over amounts: an integer tensor is a
count, a floating tensor a fraction (computed in float64, then rounded half to even like ``round``).
"""

from __future__ import annotations

import numbers
from typing import cast

import torch

Amount = int | float | torch.Tensor


def is_concrete(t: torch.Tensor) -> bool:
    """True for a real eager tensor whose values may be read (not meta, vmap/grad or fake)."""
    if t.device.type == "meta" or torch._C._functorch.is_functorch_wrapped_tensor(t):
        return False
    return not isinstance(t, torch._subclasses.FakeTensor)


def validate_amount(amount: Amount) -> None:
    """Raise like torch.nn.utils.prune for a bad ``amount``, before anything is pruned.

    Raises:
      TypeError: if ``amount`` is neither a real number nor a 0-d tensor.
      ValueError: if it is a negative int, a float outside ``[0, 1]``, or a tensor of rank > 0.
    """
    if isinstance(amount, torch.Tensor):
        if amount.dim() != 0:
            raise ValueError(f"amount must be a number or a 0-d tensor, got a tensor of shape {tuple(amount.shape)}")
        if amount.dtype == torch.bool or amount.is_complex():
            raise TypeError(f"Invalid dtype for amount: {amount.dtype}. Must be an integer or floating tensor.")
        if is_concrete(amount):
            _validate_number(amount.item())
        return
    _validate_number(amount)


def _validate_number(amount) -> None:
    # torch accepts a bool at validation, then fails in its top-k for True: reject it up front.
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount!r}. Must be int or float.")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")
    elif not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount={amount} should either be a float in the range [0, 1] or a non-negative integer")


def prune_count(amount: Amount, size: int | torch.Tensor) -> int | torch.Tensor:
    """Number of units to prune out of ``size`` still-unpruned units.

    Returns a Python int when both ``amount`` and ``size`` are Python numbers (torch's
    ``_compute_nparams_toprune``), otherwise an int64 0-d tensor.
    """
    if isinstance(amount, torch.Tensor):
        if amount.is_floating_point():
            return torch.round(amount.to(torch.float64) * size).to(torch.int64)
        return amount.to(torch.int64) + torch.zeros_like(torch.as_tensor(size), dtype=torch.int64)
    if isinstance(amount, numbers.Integral):
        return (
            int(amount) if not isinstance(size, torch.Tensor) else torch.full_like(size, int(amount), dtype=torch.int64)
        )
    if isinstance(size, torch.Tensor):
        return torch.round(size.to(torch.float64) * float(amount)).to(torch.int64)
    return round(amount * size)


def max_prune_count(amount: Amount, size: int) -> int:
    """A static upper bound on :func:`prune_count` over every ``0 <= alive <= size``."""
    if isinstance(amount, torch.Tensor):
        return size
    return min(cast(int, prune_count(amount, size)), size)  # a number amount of an int size: an int


def check_count(count: int, size: int, what: str = "parameters") -> None:
    """torch's ``_validate_pruning_amount``: a count may not exceed what is left to prune."""
    if count > size:
        raise ValueError(f"amount={count} should be smaller than the number of {what} to prune={size}")


def check_fraction(value, what: str) -> float:
    """A plain float in ``[0, 1]`` (a sparsity or a schedule value), or ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be a float in [0, 1], got {value!r}")
    return float(value)


def as_number(amount: Amount) -> Amount:
    """A concrete 0-d tensor amount becomes the Python number it holds (torch's eager rules)."""
    if isinstance(amount, torch.Tensor) and is_concrete(amount):
        return amount.item()
    return amount


def drop_count(amount: Amount, alive, what: str):
    """``(amount, k)``: the amount as a number where concrete, and how many of ``alive`` it prunes.

    ``k`` is a checked Python int when it can be (a count above ``alive`` raises ``ValueError``),
    else an int64 tensor clamped to ``[0, alive]`` (under ``vmap`` or on ``meta``).
    """
    amount = as_number(amount)
    k = prune_count(amount, alive)
    if isinstance(k, int):
        check_count(k, alive, what)
    else:
        k = torch.minimum(k.clamp(min=0), torch.as_tensor(alive, device=k.device))
    return amount, k
