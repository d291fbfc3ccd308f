"""Tensor-level mask functions: ``(scores, ..., *, mask=None) -> new bool mask``, one per torch method.

Every function here is pure: it returns a new ``torch.bool`` mask shaped like ``scores``, on the
scores' device, and never changes its inputs. ``True`` means *kept*. ``mask`` (keyword-only) is
the existing mask (``None`` for a fresh tensor): new pruning acts only on what it still keeps,
exactly as ``torch.nn.utils.prune.PruningContainer`` does, and the result includes the old mask.
Exactly the requested number of survivors is pruned whatever values they hold (NaN, +-inf).
Each method is its scores plus a granularity of the selection kernel (:mod:`funcprune.select`).

DTensor scores (``torch.distributed.tensor``, ``Shard(d)``/``Replicate()`` on a 1-D or 2-D mesh):
every function here takes them and returns a DTensor mask laid out like the scores, selecting
without gathering (:mod:`funcprune._sharded`; eager only). Unstructured L1 then breaks ties at
the cut by the lowest global index (what :func:`funcprune.global_unstructured` over that one leaf
does; the single-process ``l1_unstructured`` breaks them like torch's top-k, so the two agree
whenever no tie straddles the cut); random methods use the hash stream (``stream="hash"``);
``ln_structured`` takes float64 channel norms from per-shard partial sums (one float64 a channel
on the wire), so its masks do not depend on world size or placement and equal the one-process
mask except where two channel norms differ by less than float32 summation error (see
:func:`ln_structured`).

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

import warnings

import torch

from . import _amount, _backend, select
from ._amount import Amount
from ._norms import channel_norm as channel_norm  # re-exported: funcprune.methods.channel_norm
from .select import HashStream, prune_units

Norm = int | float | str

__all__ = [
    "identity",
    "random_unstructured",
    "l1_unstructured",
    "random_structured",
    "ln_structured",
    "custom_from_mask",
]


def identity(scores: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Prune nothing: the existing mask (or all ``True``) as a new bool tensor.

    Example:
      >>> identity(torch.randn(2, 3)).all()
      tensor(True)
    """
    return _backend.fresh(scores, _backend.keep(scores, mask), mask)


def l1_unstructured(scores: torch.Tensor, amount: Amount, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Prune the ``amount`` surviving entries of smallest absolute score.

    Args:
      scores: importance of each entry (usually the parameter itself).
      amount: int (how many) or float in ``[0, 1]`` (fraction of the survivors), or a 0-d tensor.
      mask: existing mask; only its ``True`` entries are candidates and it stays pruned. Exactly
        ``amount`` survivors are pruned whatever they hold (NaN ranks above ``inf``, as in torch).

    Returns:
      A new bool mask; with no ties in ``|scores|`` it equals torch's ``L1Unstructured`` mask.

    Example:
      >>> l1_unstructured(torch.tensor([0.5, -0.1, 2.0, 0.3]), amount=2)
      tensor([ True, False,  True, False])
    """
    _amount.validate_amount(amount)
    return prune_units(scores, select.entries(scores.shape), amount, lambda: scores.detach().abs(), mask=mask)


def _uniform(like: torch.Tensor, shape, dtype: torch.dtype, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None and tuple(shape) == tuple(like.shape) and dtype == like.dtype:
        return torch.rand_like(like)  # the very draws torch.nn.utils.prune makes
    return torch.rand(shape, generator=generator, dtype=dtype, device=like.device)


def random_unstructured(
    scores: torch.Tensor,
    amount: Amount,
    *,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stream: str | None = None,
) -> torch.Tensor:
    """Prune ``amount`` surviving entries chosen uniformly at random.

    ``scores`` only gives the shape, dtype and device. On a fresh mask with the global RNG this
    makes the same draws as torch's ``RandomUnstructured`` (``rand_like`` in the scores' dtype),
    hence the same mask after the same ``torch.manual_seed``. Pass ``generator`` for masks that
    do not touch the global RNG.

    ``stream="hash"`` (the only stream for DTensor scores, and their default) draws one 63-bit
    seed instead and prunes the survivors with the smallest keys of a counter-based hash of
    ``(seed, flat index)``, ties by lowest index: the same mask for the same seed whatever the
    sharding, world size 1 (plain tensors) included, with no full-size draw. It is not torch's
    stream, so it gives other masks than torch for the same seed. Eager only.

    Raises:
      ValueError: a bad ``amount``, a ``stream`` other than None/``"torch"``/``"hash"`` (or
        ``"torch"`` for DTensor scores), or (DTensors) ranks whose seeds differ.

    Example:
      >>> g = torch.Generator().manual_seed(0)
      >>> int(random_unstructured(torch.zeros(10), 0.3, generator=g).sum())
      7
    """
    _amount.validate_amount(amount)
    entries = select.entries(scores.shape)
    if _backend.stream(stream, scores) == "hash":
        return prune_units(scores, entries, amount, HashStream(generator), mask=mask)
    return prune_units(
        scores,
        entries,
        amount,
        lambda: _uniform(scores, scores.shape, scores.dtype, generator),
        mask=mask,
        largest=True,
    )


def random_structured(
    scores: torch.Tensor,
    amount: Amount,
    dim: int,
    *,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stream: str | None = None,
) -> torch.Tensor:
    """Prune ``amount`` whole channels along ``dim``, chosen at random among those still alive.

    A channel is alive while any of its entries survives. On a fresh mask with the global RNG it
    draws what torch's ``RandomStructured`` draws (``torch.rand(channels)`` in the default dtype).
    ``stream="hash"`` (DTensors' stream) prunes the alive channels with the smallest hash keys of
    ``(seed, channel index)``, one seed drawn per call, as :func:`random_unstructured` describes.

    Raises:
      ValueError: for a tensor with fewer than 2 dims, a bad ``amount``, a ``stream`` other than
        None/``"torch"``/``"hash"`` (or ``"torch"`` for DTensor scores), or (DTensors) ranks whose
        seeds differ.
      IndexError: if ``dim`` is out of range.

    Example:
      >>> m = random_structured(torch.zeros(4, 3), 2, dim=0, generator=torch.Generator().manual_seed(0))
      >>> m.all(dim=1).sum()
      tensor(2)
    """
    _amount.validate_amount(amount)
    channels = select.slices(scores.shape, dim)
    if _backend.stream(stream, scores) == "hash":
        return prune_units(scores, channels, amount, HashStream(generator), mask=mask)
    return prune_units(
        scores,
        channels,
        amount,
        lambda: torch.rand(channels.unit_shape, generator=generator, device=scores.device),
        mask=mask,
    )


def ln_structured(
    scores: torch.Tensor, amount: Amount, n: Norm, dim: int, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Prune the ``amount`` alive channels along ``dim`` with the smallest L``n`` norm.

    Args:
      scores: importance of each entry (usually the parameter).
      amount: channels to prune: int, float fraction of the alive channels, or 0-d tensor.
      n: the norm order, as ``p`` of :func:`torch.norm` (1, 2, ``inf``, ``-inf``, ``'fro'``, ...),
        read as the installed torch's ``ln_structured`` reads it.
      dim: the dim whose slices are the channels.
      mask: existing mask. Norms are taken over the raw scores, as torch does.

    DTensor scores (``Shard``/``Replicate`` on a 1-D or 2-D mesh, any shard dims) give a DTensor
    mask with their mesh and placements. Each rank reduces its own shard to float64 per-channel
    partials (sums of ``|x|**p``; max/min for ``inf``/``-inf``; counts for ``p=0``), one
    channels-sized float64 all-reduce combines them and the norms are finished in float64, then
    cast to the scores' norm dtype; nothing else crosses the wire. The mask is independent of the
    world size and the placements. It equals the one-process mask except where two channel norms
    differ by less than float32 summation error: torch's one-process float32 norms may split a
    true tie (two channels holding the same values in another order) by summation order, the
    float64 partials keep it a tie, broken by this function's tie rule. ``'nuc'`` is refused there.

    Raises:
      ValueError: fewer than 2 dims, a bad ``amount``, or an ``n`` that does not give one norm
        per channel (``'nuc'`` on a tensor of other than 2 dims; torch 2.14 then prunes by a
        matrix of norms); for DTensor scores also ``'nuc'`` and an unsupported placement.
      TypeError/IndexError: a bad ``n`` type or ``dim``.

    Example:
      >>> w = torch.tensor([[1.0, 1.0], [0.1, 0.1], [3.0, 0.0]])
      >>> ln_structured(w, amount=1, n=2, dim=0).all(dim=1)
      tensor([ True, False,  True])
    """
    if isinstance(n, bool) or not (isinstance(n, (int, float, str))):
        raise TypeError(f"n must be a norm order accepted by torch.norm, got {n!r}")
    _amount.validate_amount(amount)
    channels = select.slices(scores.shape, dim)

    def norms():  # torch's norms; float64 partial sums for shards (the backend's)
        # slices() builds a Slices, which has .dim; the Granularity it is annotated as does not
        return _backend.channel_norms(scores, n, channels.dim, channels.unit_shape[0])  # type: ignore[attr-defined]

    # Norms even when nothing is pruned (a bad `n` raises as in torch); torch selects the channels
    # it keeps (the largest norms): selecting the same way makes the same choice among tied norms.
    return prune_units(scores, channels, amount, norms, mask=mask, select_kept=True, lazy=False)


def custom_from_mask(scores: torch.Tensor, custom: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Prune where ``custom`` is zero (or ``False``), on top of ``mask``.

    Example:
      >>> custom_from_mask(torch.ones(3), torch.tensor([0, 1, 0]))
      tensor([False,  True, False])
    """
    custom = _backend.keep(scores, custom, "custom")
    keep = _backend.keep(scores, mask)
    here = _backend.shard_of(custom, scores, "custom")
    return _backend.wrap(here.clone() if keep is None else here & _backend.shard_of(keep, scores, "mask"), scores)


def __getattr__(name: str):
    # 1.1 named the methods that took DTensors; every method does now (the backend seam carries them).
    if name in ("DTENSOR_METHODS", "check_dtensor_method"):
        warnings.warn(
            f"funcprune.methods.{name} is deprecated: every method takes DTensor scores now (the "
            f"selection kernel runs them on the shards); it will be removed in 2.0",
            DeprecationWarning,
            stacklevel=2,
        )
        if name == "DTENSOR_METHODS":
            return (identity, l1_unstructured, random_unstructured, random_structured, ln_structured, custom_from_mask)
        return lambda method, leaf: None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
