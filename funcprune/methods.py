"""Tensor-level mask functions: ``(scores, ..., mask) -> new bool mask``, one per torch method.

Every function here is pure: it returns a new ``torch.bool`` mask shaped like ``scores``, on the
scores' device, and never changes its inputs. ``True`` means *kept*. ``mask`` is the existing
mask (``None`` for a fresh tensor): new pruning acts only on what it still keeps, exactly as
``torch.nn.utils.prune.PruningContainer`` does, and the result includes the old mask.

* Unstructured methods choose among the surviving entries, so a float ``amount`` is a fraction
  of the survivors (``round(amount * survivors)``) and an int ``amount`` may not exceed them.
* Structured methods choose among the channels along ``dim`` that still have a surviving entry.

No function reads tensor values to decide a shape: they run under ``torch.func.vmap`` (random
methods with ``randomness="different"`` or ``"same"``) and on the ``meta`` device. The one
exception is validation: in eager calls on real tensors an int ``amount`` larger than what is
left raises ``ValueError`` as torch does. Under ``vmap`` (or on ``meta``) that check cannot run;
there an int ``amount`` larger than the survivors simply prunes every survivor, and a tensor
``amount`` is clamped to ``[0, survivors]``.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from . import _amount
from ._amount import Amount, drop_count
from ._select import as_keep, count_kept, select

Norm = Union[int, float, str]

__all__ = ["identity", "random_unstructured", "l1_unstructured", "random_structured", "ln_structured",
           "custom_from_mask"]


def _unstructured(scores: torch.Tensor, make_key: Callable[[], torch.Tensor], amount: Amount,
                  keep: Optional[torch.Tensor], largest: bool) -> torch.Tensor:
    """Drop ``amount`` survivors by ``make_key()``, called only once the count is valid and non-zero
    (so a random method draws nothing, as in torch, when it fails or prunes nothing)."""
    n = scores.numel()
    alive = n if keep is None else count_kept(keep)
    amount, k = drop_count(amount, alive, "parameters")
    if isinstance(k, int) and k == 0:
        return identity(scores, keep)
    flat_keep = None if keep is None else keep.reshape(-1)
    dropped = select(make_key().reshape(-1), k, largest=largest, alive=flat_keep,
                     k_max=_amount.max_prune_count(amount, n))
    new = ~dropped.view(scores.shape)
    return new if keep is None else new & keep


def identity(scores: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prune nothing: the existing mask (or all ``True``) as a new bool tensor.

    Example:
      >>> identity(torch.randn(2, 3)).all()
      tensor(True)
    """
    keep = as_keep(scores, mask)
    if keep is None:
        return torch.ones_like(scores, dtype=torch.bool)
    return keep.clone() if keep is mask else keep


def l1_unstructured(scores: torch.Tensor, amount: Amount, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prune the ``amount`` surviving entries of smallest absolute score.

    Args:
      scores: importance of each entry (usually the parameter itself).
      amount: int (how many) or float in ``[0, 1]`` (fraction of the survivors), or a 0-d tensor.
      mask: existing mask; only its ``True`` entries are candidates and it stays pruned.

    Returns:
      A new bool mask; with no ties in ``|scores|`` it equals torch's ``L1Unstructured`` mask.

    Example:
      >>> l1_unstructured(torch.tensor([0.5, -0.1, 2.0, 0.3]), amount=2)
      tensor([ True, False,  True, False])
    """
    _amount.validate_amount(amount)
    keep = as_keep(scores, mask)
    return _unstructured(scores, lambda: scores.detach().abs(), amount, keep, largest=False)


def _uniform(like: torch.Tensor, shape, dtype: torch.dtype, generator: Optional[torch.Generator]) -> torch.Tensor:
    if generator is None and tuple(shape) == tuple(like.shape) and dtype == like.dtype:
        return torch.rand_like(like)  # the very draws torch.nn.utils.prune makes
    return torch.rand(shape, generator=generator, dtype=dtype, device=like.device)


def random_unstructured(scores: torch.Tensor, amount: Amount, mask: Optional[torch.Tensor] = None, *,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Prune ``amount`` surviving entries chosen uniformly at random.

    ``scores`` only gives the shape, dtype and device. On a fresh mask with the global RNG this
    makes the same draws as torch's ``RandomUnstructured`` (``rand_like`` in the scores' dtype),
    hence the same mask after the same ``torch.manual_seed``. Pass ``generator`` for masks that
    do not touch the global RNG.

    Example:
      >>> g = torch.Generator().manual_seed(0)
      >>> int(random_unstructured(torch.zeros(10), 0.3, generator=g).sum())
      7
    """
    _amount.validate_amount(amount)
    keep = as_keep(scores, mask)
    return _unstructured(scores, lambda: _uniform(scores, scores.shape, scores.dtype, generator), amount, keep,
                         largest=True)


def _channel_setup(scores: torch.Tensor, amount: Amount, dim: int, mask: Optional[torch.Tensor]):
    """Validate a structured call; return (dim, keep, alive channels or None, count alive, k)."""
    _amount.validate_amount(amount)
    if scores.dim() <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {tuple(scores.shape)} with {scores.dim()} dims"
        )
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -scores.dim() <= dim < scores.dim():
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(scores.shape)}")
    dim %= scores.dim()
    keep = as_keep(scores, mask)
    others = [d for d in range(scores.dim()) if d != dim]
    alive_channels = None if keep is None else keep.any(dim=others) if others else keep
    alive = scores.shape[dim] if keep is None else count_kept(alive_channels)
    amount, k = drop_count(amount, alive, "parameters")
    return dim, others, keep, alive_channels, alive, amount, k


def _spread(channels: torch.Tensor, scores: torch.Tensor, dim: int, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """Broadcast a per-channel keep vector along ``dim`` to the scores' shape (and the old mask)."""
    view = [1] * scores.dim()
    view[dim] = -1
    new = channels.view(view).expand(scores.shape)
    return new.clone() if keep is None else new & keep


def random_structured(scores: torch.Tensor, amount: Amount, dim: int, mask: Optional[torch.Tensor] = None, *,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Prune ``amount`` whole channels along ``dim``, chosen at random among those still alive.

    A channel is alive while any of its entries survives. On a fresh mask with the global RNG it
    draws what torch's ``RandomStructured`` draws (``torch.rand(channels)`` in the default dtype).

    Raises:
      ValueError: for a tensor with fewer than 2 dims, or a bad ``amount``.
      IndexError: if ``dim`` is out of range.

    Example:
      >>> m = random_structured(torch.zeros(4, 3), 2, dim=0, generator=torch.Generator().manual_seed(0))
      >>> m.all(dim=1).sum()
      tensor(2)
    """
    dim, _, keep, alive_channels, alive, amount, k = _channel_setup(scores, amount, dim, mask)
    if isinstance(k, int) and k == 0:
        return identity(scores, keep)
    prob = torch.rand(scores.shape[dim], generator=generator, device=scores.device)
    dropped = select(prob, k, largest=False, alive=alive_channels, k_max=scores.shape[dim])
    return _spread(~dropped, scores, dim, keep)


def ln_structured(scores: torch.Tensor, amount: Amount, n: Norm, dim: int,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prune the ``amount`` alive channels along ``dim`` with the smallest L``n`` norm.

    Args:
      scores: importance of each entry (usually the parameter).
      amount: channels to prune: int, float fraction of the alive channels, or 0-d tensor.
      n: the norm order, as ``p`` of :func:`torch.norm` (1, 2, ``inf``, ``-inf``, ``'fro'``, ...).
      dim: the dim whose slices are the channels.
      mask: existing mask. Norms are taken over the raw scores, as torch does.

    Example:
      >>> w = torch.tensor([[1.0, 1.0], [0.1, 0.1], [3.0, 0.0]])
      >>> ln_structured(w, amount=1, n=2, dim=0).all(dim=1)
      tensor([ True, False,  True])
    """
    if isinstance(n, bool) or not (isinstance(n, (int, float, str))):
        raise TypeError(f"n must be a norm order accepted by torch.norm, got {n!r}")
    dim, others, keep, alive_channels, alive, amount, k = _channel_setup(scores, amount, dim, mask)
    norm = torch.norm(scores.detach(), p=n, dim=others)  # before the shortcut: a bad `n` raises as in torch
    if isinstance(k, int) and k == 0:
        return identity(scores, keep)
    survivors = select(norm, alive - k, largest=True, alive=alive_channels, k_max=scores.shape[dim])
    return _spread(survivors, scores, dim, keep)


def custom_from_mask(scores: torch.Tensor, custom: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prune where ``custom`` is zero (or ``False``), on top of ``mask``.

    Example:
      >>> custom_from_mask(torch.ones(3), torch.tensor([0, 1, 0]))
      tensor([False,  True, False])
    """
    custom = as_keep(scores, custom, "custom")
    keep = as_keep(scores, mask)
    return custom.clone() if keep is None else custom & keep


