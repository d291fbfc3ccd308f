"""The selection kernel, public: pick the units to prune (or keep) among the survivors, at a granularity.

A pruning method is its scores plus a *granularity* (as in jaxpruner, ``calculate_scores`` plus
``topk_fn``): :func:`prune_units` (an ``amount`` of units in every pool) and :func:`keep_per_pool`
(a fixed count per pool) do the counting, the selection among survivors and the broadcast back to
the entries, so a new method writes no selection code. A granularity says what a unit is (the
entries kept or pruned together) and which units compete:

* :func:`entries`: every entry is a unit, all compete (unstructured methods);
* :func:`slices`: the slices along a dim (channels) are the units, all compete;
* :func:`blocks`: tiles of a block shape are the units, all compete;
* :func:`groups`: entries compete within runs of ``size`` consecutive entries along a dim (N:M);
* :func:`rows`: entries compete within each slice along a dim, e.g. per output row of a 2-D
  weight (one-shot LLM methods prune the same fraction of every row).

A per-output-row magnitude method, in full::

    def row_magnitude(scores, amount, *, mask=None):
        return prune_units(scores, rows(scores.shape, 0), amount, scores.detach().abs(), mask=mask)

The same method takes DTensor scores (``Shard``/``Replicate`` on a 1-D or 2-D mesh) and returns a
DTensor mask laid out like them, without gathering: the kernel goes through the backend seam
(:mod:`funcprune._backend`). :func:`entries` then selects by an exact global radix cut (counts
summed across the mesh, ties to the lowest global index; the scores must be non-negative, e.g.
magnitudes), :func:`slices` by the one-process kernel on the channel scores (one per channel, the
same on every rank), and :func:`rows` and :func:`groups` within the pools each rank holds whole
(a placement that splits a pool is refused, as are :func:`blocks`). :class:`HashStream` scores
draw from the hash stream (a counter over global indices: the same mask whatever the sharding).

Survivors are tracked with a mask, never a sentinel value: whatever the surviving scores hold
(NaN, +-inf), exactly the requested number of survivors is selected. NaN ranks above ``+inf``
(as in ``torch.topk``); ``-0.0`` ties ``0.0``. Ties: in one flat pool (:func:`entries`,
:func:`slices`, :func:`blocks`) as ``torch.topk`` breaks them, so a fresh selection is torch's;
within :func:`groups` and :func:`rows`, to the lower index.

The selection primitives under them, chosen by what is static:

* :func:`select_flat`: one flat pool. With a Python-int ``k`` it is an unsorted ``topk`` (the same
  positions torch's sorted ``topk`` picks, ties included, at a fraction of the cost); on real CPU
  tensors a k-th value threshold comes first and is kept only when no tie straddles the cut
  (then every top-k agrees), another 3-5x faster (CUDA's ``topk`` is a radix select already,
  and the threshold needs host syncs). With a tensor ``k`` (a per-element count under ``vmap``,
  or a swept amount) it is a sorted ``topk`` at a static bound ``k_max`` followed by a
  per-element cutoff, so no shape depends on data. With ``alive``, ``topk`` sees the keys mapped
  to integers in the same order, the integer type's extremes left free to rank the dead last
  (the threshold path fills the dead with ``+-inf`` and refuses a cut at that value).
* :func:`select_per_pool`: many pools at once (rows of a 2-D key), ties to the lower index in
  each pool. Small pools (N:M groups, up to 16) rank by pairwise comparisons of whole columns,
  no sort at all; long rows get each key's index folded into the low bits of an integer key, so
  a pool's keys are all distinct and ``topk`` has no tie to break (a stable sort for 64-bit keys).

Many tensors at once (global pruning) is the radix selection of :mod:`funcprune._radix`, the
other half of the kernel; torch's own choice among ties on survivors (``torch.nn.utils.prune``'s
``t[mask == 1]``) lives with :mod:`funcprune.compat`. Apart from the eager-only threshold path,
everything here runs under ``torch.func.vmap`` and on ``meta``: no shape depends on data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from . import _backend, _select_sharded
from ._amount import Amount, as_number, check_count, drop_count, is_concrete, max_prune_count
from ._backend import HashStream, as_keep
from ._granularity import Granularity, blocks, check_dim, check_group_size, entries, groups, rows, slices
from ._select import FAST_MIN as FAST_MIN
from ._select import select_flat, select_per_pool

Count = int | torch.Tensor
Scores = torch.Tensor | Callable[[], torch.Tensor] | HashStream

__all__ = [
    "Granularity",
    "entries",
    "slices",
    "blocks",
    "groups",
    "rows",
    "prune_units",
    "keep_per_pool",
    "select_flat",
    "select_per_pool",
    "as_keep",
    "count_kept",
    "HashStream",
    "Count",
    "Scores",
    "check_dim",
    "check_group_size",
]


def count_kept(keep: torch.Tensor, dims=None) -> int | torch.Tensor:
    """Number of kept entries: a Python int on real eager tensors, a tensor otherwise (``vmap``, ``meta``).

    Args:
      keep: a bool mask.
      dims: dims to count over (all when None).

    Returns:
      The count (an int only for a count over all dims of a concrete tensor).

    Example:
      >>> count_kept(torch.tensor([True, False, True]))
      2
    """
    total = keep.sum(dims) if dims is not None else keep.sum()
    return int(total) if is_concrete(keep) else total


# ----------------------------------------------------------------------------------------------
# The kernel: count, select, spread.


def _finish(gran: Granularity, unit_keep: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Kept units spread over the entries, on top of the old mask: a new tensor, never a view."""
    new = gran.spread(unit_keep)
    if keep is not None:
        return new & keep
    return new.contiguous() if gran.expands else new


def _finish_dropped(gran: Granularity, unit_dropped: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """:func:`_finish` from the dropped units (the kernel's own fresh tensor): one op fewer per call."""
    if gran.expands:  # negate the few units, not their broadcast (a strided negation is slow)
        return _finish(gran, unit_dropped.logical_not_(), keep)
    new = gran.spread(unit_dropped).logical_not_()
    return new if keep is None else new & keep


def unchanged(like: torch.Tensor, keep: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """Nothing pruned: ``keep`` (all ``True`` for None) as a new tensor, never the caller's ``mask`` itself."""
    if keep is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return keep.clone() if keep is mask else keep


def _unit_scores(gran: Granularity, scores: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
    key = scores() if callable(scores) else scores
    if tuple(key.shape) != gran.unit_shape:
        raise ValueError(f"unit scores have shape {tuple(key.shape)}, expected {gran.unit_shape}")
    return key.detach() if key.requires_grad else key


def _select_units(gran: Granularity, key, k, *, largest, alive, k_max) -> torch.Tensor:
    """Selected units of the unit-shaped ``key`` (``alive`` pooled), as :meth:`Granularity.unpool` reads them."""
    if gran.index_ties:
        return select_per_pool(gran.pools(key), k, largest=largest, alive=alive, k_max=k_max)
    flat_alive = None if alive is None else alive.reshape(-1)
    return select_flat(key.reshape(-1), k, largest=largest, alive=flat_alive, k_max=k_max)  # one pool: flat


def prune_units(
    like: torch.Tensor,
    gran: Granularity,
    amount: Amount,
    scores: Scores,
    *,
    mask: torch.Tensor | None = None,
    largest: bool = False,
    select_kept: bool = False,
    lazy: bool = True,
    what: str = "parameters",
) -> torch.Tensor:
    """A new keep mask with ``amount`` of the alive units of every pool pruned, by their scores.

    The one selection path of every amount-based method. ``amount`` counts (int) or is a fraction
    (float, ``round(amount * alive)``) of the alive units of each pool: a unit is alive while one
    of its entries survives in ``mask``. An int above a pool's alive units raises ``ValueError``
    in eager calls; under ``vmap`` or on ``meta`` it prunes every survivor (a tensor amount is
    clamped to ``[0, alive]``). A DTensor ``like`` (scores and mask laid out like it, or
    ``Replicate()``) gives a DTensor mask with its placements, selected on the shards as the module
    docstring describes (eager only).

    Args:
      like: the tensor being pruned (gives shape and device).
      gran: the granularity: :func:`entries`, :func:`slices`, :func:`blocks`, :func:`groups` or
        :func:`rows` of ``like.shape``.
      amount: int, float in ``[0, 1]``, or 0-d tensor (already validated by the method).
      scores: one score per unit (a tensor of ``gran.unit_shape``), or a callable returning it,
        called once the count is valid, or a :class:`HashStream` (:func:`entries` and
        :func:`slices` only).
      mask: the existing mask; only its survivors are candidates and it stays pruned.
      largest: prune the units of largest score (else smallest).
      select_kept: select the kept units instead (``alive - k`` from the other end); the same
        set without ties, and torch's choice among ties where torch selects the kept ones.
      lazy: call ``scores`` only when something is pruned (so a random method draws nothing
        otherwise, as in torch); False calls it even then (torch computes norms regardless).
      what: the units' name in error messages.

    Returns:
      A new bool mask of ``like``'s shape, on its device.

    Example:
      >>> w = torch.tensor([[1.0, -4.0, 2.0, 0.5], [0.1, 3.0, -0.2, 9.0]])
      >>> prune_units(w, rows(w.shape, 0), 0.5, w.abs())
      tensor([[False,  True,  True, False],
              [False,  True, False,  True]])
    """
    if _backend.sharded(like) or isinstance(scores, HashStream):
        return _select_sharded.prune_spread(
            like,
            gran,
            amount,
            scores,
            mask=mask,
            largest=largest,
            select_kept=select_kept,
            lazy=lazy,
            what=what,
            local=prune_units,
        )
    keep = as_keep(like, mask)
    alive = None if keep is None else gran.pools(gran.alive(keep))
    units = gran.pool_size
    n_alive: int | torch.Tensor
    if alive is None:  # exactly when keep is None
        n_alive = units
    elif gran.n_pools == 1:
        n_alive = count_kept(alive)
    else:  # one count per pool; an int amount is checked against the pool with the fewest survivors
        n_alive = alive.sum(-1)
        if is_concrete(n_alive) and gran.n_pools and isinstance(as_number(amount), int):
            check_count(cast(int, as_number(amount)), int(n_alive.min()), what)
    amount, k = drop_count(amount, n_alive, what)
    if not lazy and callable(scores):
        scores = scores()
    if isinstance(k, int) and k == 0:
        return unchanged(like, keep, mask)
    key = _unit_scores(gran, scores)
    if select_kept:
        kept = _select_units(gran, key, n_alive - k, largest=not largest, alive=alive, k_max=units)
    else:
        dropped = _select_units(gran, key, k, largest=largest, alive=alive, k_max=max_prune_count(amount, units))
        return _finish_dropped(gran, gran.unpool(dropped), keep)
    return _finish(gran, gran.unpool(kept), keep)


def keep_per_pool(
    like: torch.Tensor,
    gran: Granularity,
    count: int,
    scores: torch.Tensor | Callable[[], torch.Tensor],
    *,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """A new keep mask that keeps the ``count`` alive units of largest score in every pool (N:M).

    A pool with fewer survivors keeps just those. Ties follow the granularity (lower index for
    :func:`groups` and :func:`rows`).

    Args:
      like: the tensor being pruned (gives shape and device).
      gran: the granularity, usually :func:`groups` (N:M) or :func:`rows` of ``like.shape``.
      count: units kept per pool (an int).
      scores: one score per unit (a tensor of ``gran.unit_shape``), or a callable returning it.
      mask: the existing mask; only its survivors are candidates and it stays pruned.

    Returns:
      A new bool mask of ``like``'s shape, on its device.

    Example:
      >>> w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
      >>> keep_per_pool(w, groups(w.shape, 4, -1), 2, w.abs())
      tensor([[False,  True,  True, False,  True,  True, False, False]])
    """
    if _backend.sharded(like):
        here, local_gran, local_keep, local_scores = _select_sharded.local_pools(like, gran, scores, mask)
        if here.numel() == 0:  # an empty shard: no pool here
            return _backend.fresh(like, _backend.keep(like, mask), mask)
        return _backend.wrap(keep_per_pool(here, local_gran, count, local_scores, mask=local_keep), like)
    keep = as_keep(like, mask)
    alive = None if keep is None else gran.pools(gran.alive(keep))
    key = _unit_scores(gran, scores)
    kept = _select_units(gran, key, count, largest=True, alive=alive, k_max=count)
    return _finish(gran, gran.unpool(kept), keep)
