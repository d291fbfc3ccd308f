"""torch.nn.utils.prune's amount helpers, as thin wrappers over :mod:`funcprune._amount`.

torch's own pruning tests call these module-level helpers directly, so they keep torch's
signatures and rules (a ``bool`` is an ``int`` here, as in torch; tensors are rejected), and
:mod:`funcprune.compat` binds them under torch's names (``_validate_pruning_amount`` ...). Here
they have public-internal names: no underscore name crosses a module.
"""

from __future__ import annotations

import numbers
from typing import cast

import torch

from .. import _amount, methods

__all__ = [
    "as_core_amount",
    "check_not_bool",
    "prune_count",
    "validate_pruning_amount_init",
    "validate_pruning_amount",
    "compute_nparams_toprune",
    "validate_structured_pruning",
    "validate_pruning_dim",
    "compute_norm",
]


def as_core_amount(amount):
    """torch treats ``True``/``False`` as the ints 1/0; the core does not accept bools."""
    return int(amount) if isinstance(amount, bool) else amount


def validate_pruning_amount_init(amount) -> None:
    """Raise ``TypeError``/``ValueError`` for an amount that is not an int >= 0 or a float in [0, 1].

    Example:
      >>> validate_pruning_amount_init(0.3)
    """
    if not isinstance(amount, numbers.Real):
        raise TypeError(f"Invalid type for amount: {amount}. Must be int or float.")
    _amount.validate_amount(as_core_amount(amount))


def validate_pruning_amount(amount, tensor_size: int) -> None:
    """Raise ``ValueError`` if an int ``amount`` exceeds ``tensor_size`` (floats always fit).

    Example:
      >>> validate_pruning_amount(3, tensor_size=4)
    """
    if isinstance(amount, numbers.Integral):
        _amount.check_count(int(amount), tensor_size)


def compute_nparams_toprune(amount, tensor_size: int) -> int:
    """Units to prune: an int ``amount`` as is, a float as ``round(amount * tensor_size)``.

    Example:
      >>> compute_nparams_toprune(0.4, 17)
      7
    """
    if isinstance(amount, numbers.Integral):
        return cast(int, amount)  # as given, like torch (an Integral such as a numpy int counts as an int)
    return cast(int, _amount.prune_count(float(amount), tensor_size))  # of an int size: an int


def validate_structured_pruning(t: torch.Tensor) -> None:
    """Raise ``ValueError`` for a tensor with fewer than 2 dims (channels need structure)."""
    if t.dim() <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {t.shape} with {t.dim()} dims"
        )


def validate_pruning_dim(t: torch.Tensor, dim: int) -> None:
    """Raise ``IndexError`` if ``dim >= t.dim()``, as torch does."""
    if dim >= t.dim():
        raise IndexError(f"Invalid index {dim} for tensor of size {t.shape}")


def compute_norm(t: torch.Tensor, n, dim: int) -> torch.Tensor:
    """L``n`` norm of every channel along ``dim`` (over all the other dims): torch's own helper.

    The core's one channel-norm helper (:func:`funcprune.methods.channel_norm`), which is the running torch's
    ``compute_norm``: the accepted ``n`` (torch 2.13 takes ``None`` as the 2-norm, 2.14 rejects
    it; ``True`` is 1.0 on both), the errors and the numbers are that torch's.

    Example:
      >>> compute_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 2, 0)
      tensor([5., 1.])
    """
    return methods.channel_norm(t, n, dim)


def check_not_bool(amount, k) -> None:
    """torch counts ``amount=True`` as 1 in its checks, then its top-k/k-th value rejects the bool."""
    if isinstance(amount, bool) and k:
        raise TypeError(
            f"amount={amount!r}: a bool is not a count (torch.nn.utils.prune fails on it "
            "too: top-k: argument 'k' must be int, not bool)"
        )


def prune_count(amount, size: int) -> int:
    """torch's number of units to prune out of ``size``, after torch's checks (an int, or ``True``)."""
    k = compute_nparams_toprune(amount, size)
    validate_pruning_amount(k, size)
    return k
