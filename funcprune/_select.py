"""The selection primitives under :mod:`funcprune.select`: the k extreme keys among survivors, in one pool or many.

:func:`select_flat` and :func:`select_per_pool` are public through :mod:`funcprune.select`, whose
docstring describes how they choose; this module holds them and the key transforms they share.
"""

from __future__ import annotations

import math

import torch

from ._amount import is_concrete
from ._radix import INF_BITS, INT_VIEW

__all__ = ["select_flat", "select_per_pool", "FAST_MIN"]

Count = int | torch.Tensor

FAST_MIN = 1 << 14  # below this, topk is as fast as the threshold path
_SAMPLE = 1 << 13  # sample size bracketing the k-th value: ~4% of the keys fall inside the bracket


# ----------------------------------------------------------------------------------------------
# Keys: survivors are ranked by a mask, never by a sentinel value.


def _worst(largest: bool) -> float:
    """The float key value that is never selected before a finite one (the fast path's filler)."""
    return -math.inf if largest else math.inf


def _ordered(key: torch.Tensor) -> torch.Tensor:
    """Integer keys in ``topk``'s order of ``key`` whose dtype's two extremes no key takes.

    Floats become their bit patterns made monotone (NaN, made one canonical NaN, ranks above
    ``+inf`` as in ``topk``; ``-0.0`` ties ``0.0``) in an integer of the same width; narrow
    integers widen; int64 keys are clamped off the two extremes (which only ties the key
    ``2**63 - 1`` with ``2**63 - 2``). So a dead entry filled with an extreme ranks after every
    survivor, whatever the survivors hold. Eager keys with no sign bit set (the usual magnitudes,
    norms and uniform draws, certified by one read-only pass) skip the sign fix-up.
    """
    if key.dtype.is_floating_point:
        itype = INT_VIEW[key.element_size()]
        if key.dtype in INF_BITS and is_concrete(key) and not bool(torch.signbit(key).any()):
            # eager, no sign bit set (magnitudes, norms, uniform draws): the bits are ordered already
            return key.view(itype).clamp(max=INF_BITS[key.dtype] + 1)  # every NaN -> one value above +inf
        bits = torch.where(key.isnan(), math.nan, key).view(itype)
        return torch.where(bits < 0, torch.iinfo(itype).min - bits, bits)  # negatives: -magnitude
    if key.dtype == torch.int64:
        info = torch.iinfo(torch.int64)
        return key.clamp(info.min + 1, info.max - 1)
    if key.dtype == torch.bool or key.is_complex():
        raise TypeError(f"scores must be real numbers, got dtype {key.dtype}")
    return key.to(torch.int32 if key.element_size() < 4 else torch.int64)


def _dead_last(key: torch.Tensor, alive: torch.Tensor | None, largest: bool, always: bool = False) -> torch.Tensor:
    """A key in which no dead entry ranks before a surviving one (``key`` itself if all survive
    and not ``always``, else integer keys from :func:`_ordered`)."""
    if alive is None and not always:
        return key
    ordered = _ordered(key)
    if alive is None:
        return ordered
    info = torch.iinfo(ordered.dtype)
    return ordered.masked_fill(~alive, info.min if largest else info.max)


def _select_by_threshold(key: torch.Tensor, k: int, largest: bool, filled: bool = False) -> torch.Tensor | None:
    """Eager fast path of :func:`select_flat`: the ``k`` extreme entries as ``key <= v`` (``key >= v``).

    The k-th value ``v`` comes from a 4-sigma bracket read off a strided sample: one counting
    pass, one pass gathering the few keys inside the bracket, a ``kthvalue`` on those. It is used
    only when it is certified to be *the* unique answer: exactly ``k`` entries lie at or beyond
    ``v`` (no tie straddles the cut, NaN ranks as the largest key, as ``topk`` ranks it). Then it
    equals torch's ``topk`` positions whatever their tie-breaking. Otherwise (ties at the cut, an
    unlucky bracket, integer keys) it returns None and the caller runs ``topk``. With ``filled``
    the dead entries of ``key`` hold the never-selected extreme (``+inf``, or ``-inf`` for
    ``largest``): a cut at that value could take a dead entry for a surviving ``inf``, so it
    returns None there too.
    """
    if not key.dtype.is_floating_point:
        return None
    n = key.numel()
    rank = k if not largest else n - k + 1  # 1-based rank of v among the keys, smallest first
    sample = key[:: max(n // _SAMPLE, 1)]
    s = sample.numel()
    pos = (rank - 0.5) * s / n
    margin = 4.0 * math.sqrt(s * (rank / n) * (1.0 - rank / n)) + 2.0
    lo_i, hi_i = int(pos - margin), int(pos + margin)
    # Two O(s) selections: a CPU sort of even a few thousand keys costs as much as a pass over n.
    lo = sample.kthvalue(lo_i + 1).values if lo_i > 0 else None
    hi = sample.kthvalue(hi_i + 1).values if hi_i < s - 1 else None
    inside = torch.ones_like(key, dtype=torch.bool) if lo is None else key >= lo
    if hi is not None:
        inside &= key <= hi
    below = 0 if lo is None else int(torch.count_nonzero(key < lo))
    candidates = key[inside]  # eager only: a data-dependent shape, never returned
    if not below < rank <= below + candidates.numel():
        return None
    v = candidates.kthvalue(rank - below).values
    if filled and bool(v == _worst(largest)):
        return None
    if largest:  # selected: not below v (NaN included, as topk counts it the largest)
        if n - below - int(torch.count_nonzero(candidates < v)) != k:
            return None
        return (key < v).logical_not_()
    if below + int(torch.count_nonzero(candidates <= v)) != k:
        return None
    return key <= v


def select_flat(
    key: torch.Tensor, k: Count, *, largest: bool, alive: torch.Tensor | None = None, k_max: int | None = None
) -> torch.Tensor:
    """Bool mask (shape of the flat ``key``) of the ``k`` largest or smallest entries among ``alive``.

    Ties are broken as ``torch.topk`` breaks them (so a fresh selection is torch's). Dead entries
    are never selected while ``k`` does not exceed the number alive, whatever values the
    survivors hold (NaN ranks above ``+inf``, as in ``topk``).

    Args:
      key: a 1-D tensor of scores.
      k: how many to select; a Python int, or an int64 0-d tensor (possibly batched by ``vmap``).
      largest: select the largest keys (else the smallest).
      alive: optional bool mask of the candidates.
      k_max: a static upper bound on a tensor ``k`` (defaults to ``key.numel()``).

    Returns:
      A new bool tensor shaped like ``key``.

    Example:
      >>> key = torch.tensor([float("nan"), float("inf"), 1.0, 2.0])
      >>> select_flat(key, 2, largest=True, alive=torch.tensor([True, True, False, False]))
      tensor([ True,  True, False, False])
    """
    n = key.numel()
    if isinstance(k, int):
        if k == 0:
            return torch.zeros(n, dtype=torch.bool, device=key.device)
        if k < n and n >= FAST_MIN and key.device.type == "cpu" and key.is_floating_point() and is_concrete(key):
            filled = key if alive is None else key.masked_fill(~alive, _worst(largest))
            fast = _select_by_threshold(filled, k, largest, filled=alive is not None)
            if fast is not None:
                return fast
        idx = torch.topk(_dead_last(key, alive, largest), k, largest=largest, sorted=False).indices
        chosen = torch.zeros(n, dtype=torch.bool, device=key.device)
        # Filling a fresh tensor in place saves a copy; under vmap the indices are batched.
        return chosen.index_fill_(0, idx, True) if is_concrete(idx) else chosen.index_fill(0, idx, True)
    k_max = n if k_max is None else min(k_max, n)
    chosen = torch.zeros(n, dtype=torch.bool, device=key.device)
    if k_max == 0:
        return chosen
    idx = torch.topk(_dead_last(key, alive, largest), k_max, largest=largest, sorted=True).indices
    take = torch.arange(k_max, device=key.device) < k
    return chosen.scatter(0, idx, take)


def _pairwise_rank(ordered: torch.Tensor, largest: bool) -> torch.Tensor:
    """For each entry of a ``(pools, units)`` key, how many of its pool rank before it (ties: lower index first).

    ``units * (units - 1) / 2`` comparisons of whole columns: for the small pools of N:M patterns
    this is cheaper than a ``topk`` per pool, and it needs no sort at all.
    """
    units = ordered.shape[-1]
    cols = ordered.unbind(-1)
    ranks = [torch.zeros_like(cols[0], dtype=torch.uint8) for _ in range(units)]
    for i in range(units):
        for j in range(i + 1, units):
            first = cols[i] >= cols[j] if largest else cols[i] <= cols[j]  # the lower index wins a tie
            ranks[j] = ranks[j] + first
            ranks[i] = ranks[i] + first.logical_not()
    return torch.stack(ranks, dim=-1)


_PAIRWISE_MAX = 16  # pools up to this size are ranked by pairwise comparisons


def select_per_pool(
    key: torch.Tensor, k: Count, *, largest: bool, alive: torch.Tensor | None = None, k_max: int | None = None
) -> torch.Tensor:
    """Bool mask of the ``k`` largest or smallest alive entries in every row (pool) of a 2-D ``key``.

    Ties go to the lower index within the row. Dead entries rank after every survivor, whatever
    values the survivors hold (NaN ranks above ``+inf``): they are selected only in a row with
    fewer than ``k`` survivors.

    Args:
      key: ``(pools, units)`` scores.
      k: per-row count: a Python int (the same for all rows) or an int64 tensor broadcastable to
        ``(pools,)`` (possibly batched by ``vmap``).
      largest: select the largest keys (else the smallest).
      alive: optional ``(pools, units)`` bool mask of the candidates.
      k_max: a static upper bound on a tensor ``k`` (defaults to ``units``).

    Returns:
      A new ``(pools, units)`` bool tensor.

    Example:
      >>> select_per_pool(torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 1.0, 1.0, 1.0]]), 2, largest=True)
      tensor([[ True,  True, False, False],
              [ True,  True, False, False]])
    """
    pools, units = key.shape
    count = min(k, units) if isinstance(k, int) else units if k_max is None else min(k_max, units)
    if count == 0 or units == 0:
        return torch.zeros(key.shape, dtype=torch.bool, device=key.device)
    ordered = _dead_last(key, alive, largest, always=True)
    per_pool = k if isinstance(k, int) else torch.as_tensor(k, device=key.device).reshape(-1, 1)
    if units <= _PAIRWISE_MAX:
        return _pairwise_rank(ordered, largest) < per_pool
    if key.element_size() <= 4 and units < (1 << 31):
        # The index in the low bits (reversed for `largest`): a pool's keys are all distinct.
        index = torch.arange(units, device=key.device)
        ranked = ordered.to(torch.int64).mul_(units).add_(units - 1 - index if largest else index)
        if alive is not None:  # dead entries took the extreme of a narrower type: move them to int64's
            info = torch.iinfo(torch.int64)
            ranked = ranked.masked_fill(~alive, info.min if largest else info.max)
        idx = torch.topk(ranked, count, dim=-1, largest=largest, sorted=not isinstance(k, int)).indices
    else:  # 64-bit keys: no room for the index, a stable sort keeps index order among ties
        idx = torch.sort(ordered, dim=-1, descending=largest, stable=True).indices[:, :count]
    chosen = torch.zeros(key.shape, dtype=torch.bool, device=key.device)
    if isinstance(k, int):
        return chosen.scatter(-1, idx, True)
    take = torch.arange(count, device=key.device) < per_pool
    return chosen.scatter(-1, idx, take.expand(idx.shape))
