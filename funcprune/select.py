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

import functools
import math
from collections.abc import Callable, Sequence
from typing import cast

import torch

from . import _backend
from ._amount import Amount, as_number, check_count, drop_count, is_concrete, max_prune_count
from ._backend import HashStream, as_keep
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


def check_dim(dim, shape: Sequence[int]) -> int:
    """``dim`` made non-negative, or TypeError (not an int) / IndexError (out of range)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -len(shape) <= dim < len(shape) or not shape:
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(shape)}")
    return dim % len(shape)


# ----------------------------------------------------------------------------------------------
# Granularities: what a unit is, and which units compete.


class Granularity:
    """How the entries of a tensor of ``shape`` form units, and which units compete (in one pool or many).

    A method computes one score per unit (a tensor of :attr:`unit_shape`; :meth:`pool` reduces
    per-entry scores to it); the kernel views those as ``(pools, units per pool)``, selects in
    every pool, and spreads the kept units back over the entries.
    """

    #: ties in a pool go to the lower index (else to ``topk``'s order, torch's)
    index_ties = False
    #: :meth:`spread` may return a broadcast view
    expands = False

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(shape)

    @property
    def n_pools(self) -> int:
        """How many pools compete separately."""
        return 1

    @property
    def pool_size(self) -> int:
        """Units per pool."""
        return math.prod(self.unit_shape)

    @property
    def unit_shape(self) -> tuple[int, ...]:
        """The shape of a tensor holding one score per unit."""
        return self.shape

    def pool(self, t: torch.Tensor, reduce: Callable[[torch.Tensor, list], torch.Tensor]) -> torch.Tensor:
        """Per-entry ``t`` reduced to one value per unit by ``reduce(t, dims)``."""
        return t

    def alive(self, keep: torch.Tensor) -> torch.Tensor:
        """Units that still have a surviving entry."""
        return self.pool(keep, lambda t, dims: t.any(dim=dims))

    def pools(self, units: torch.Tensor) -> torch.Tensor:
        """A unit-shaped tensor as ``(pools, units per pool)``."""
        return units.reshape(1, -1)

    def unpool(self, pooled: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`pools`."""
        return pooled.reshape(self.unit_shape)

    def spread(self, units: torch.Tensor) -> torch.Tensor:
        """A per-unit bool tensor broadcast over the entries (a tensor of :attr:`shape`, maybe a view)."""
        return units


class _Entries(Granularity):
    pass


class _Slices(Granularity):
    expands = True

    def __init__(self, shape, dim: int) -> None:
        super().__init__(shape)
        self.dim = dim
        self.others = [d for d in range(len(shape)) if d != dim]

    @property
    def unit_shape(self):
        return (self.shape[self.dim],)

    def pool(self, t, reduce):
        return reduce(t, self.others) if self.others else t

    def spread(self, units):
        view = [1] * len(self.shape)
        view[self.dim] = -1
        return units.view(view).expand(self.shape)


class _Blocks(Granularity):
    expands = True

    def __init__(self, shape, block_shape: tuple[int, ...]) -> None:
        super().__init__(shape)
        self.block_shape = block_shape
        self.grid = tuple(s // b for s, b in zip(shape, block_shape))
        self.inner = list(range(1, 2 * len(shape), 2))

    @property
    def unit_shape(self):
        return self.grid

    def pool(self, t, reduce):
        return reduce(t.reshape([size for g, b in zip(self.grid, self.block_shape) for size in (g, b)]), self.inner)

    def spread(self, units):
        view = [size for g in self.grid for size in (g, 1)]
        full = [size for g, b in zip(self.grid, self.block_shape) for size in (g, b)]
        return units.reshape(view).expand(full).reshape(self.shape)


class _Groups(Granularity):
    index_ties = True

    def __init__(self, shape, size: int, dim: int) -> None:
        super().__init__(shape)
        self.size, self.dim = size, dim

    @property
    def n_pools(self):
        return math.prod(self.shape) // self.size

    @property
    def pool_size(self):
        return self.size

    def pools(self, units):
        return units.movedim(self.dim, -1).reshape(-1, self.size)

    def unpool(self, pooled):
        moved = list(self.shape)
        moved.append(moved.pop(self.dim))
        return pooled.reshape(moved).movedim(-1, self.dim)


class _Rows(_Groups):
    def __init__(self, shape, dim: int) -> None:
        super().__init__(shape, max(math.prod(shape) // max(shape[dim], 1), 1), dim)

    @property
    def n_pools(self):
        return self.shape[self.dim]

    @property
    def pool_size(self):
        return math.prod(self.shape) // self.shape[self.dim] if self.shape[self.dim] else 0

    def pools(self, units):
        return units.movedim(self.dim, 0).reshape(self.shape[self.dim], -1)

    def unpool(self, pooled):
        moved = [self.shape[self.dim]] + [s for d, s in enumerate(self.shape) if d != self.dim]
        return pooled.reshape(moved).movedim(0, self.dim)


def entries(shape: Sequence[int]) -> Granularity:
    """Every entry is a unit, and all compete (unstructured pruning).

    Args:
      shape: the pruned tensor's shape.

    Returns:
      The granularity; its ``unit_shape`` is ``shape``.

    Example:
      >>> prune_units(torch.tensor([0.5, -0.1, 2.0]), entries((3,)), 1, torch.tensor([0.5, 0.1, 2.0]))
      tensor([ True, False,  True])
    """
    return _entries(tuple(shape))


def slices(shape: Sequence[int], dim: int) -> Granularity:
    """The slices along ``dim`` (channels) are the units, and all compete (torch's structured rules).

    Args:
      shape: the pruned tensor's shape (at least 2 dims).
      dim: the dim whose slices are the units.

    Returns:
      The granularity; its ``unit_shape`` is ``(shape[dim],)``.

    Example:
      >>> w = torch.tensor([[1.0, 0.1], [2.0, 0.2]])
      >>> prune_units(w, slices(w.shape, 1), 1, w.abs().sum(0))
      tensor([[ True, False],
              [ True, False]])

    Raises:
      ValueError: fewer than 2 dims (torch's message). TypeError/IndexError: a bad ``dim``.
    """
    shape = tuple(shape)
    if len(shape) <= 1:
        raise ValueError(
            "Structured pruning can only be applied to multidimensional tensors. "
            f"Found tensor of shape {shape} with {len(shape)} dims"
        )
    return _slices(shape, check_dim(dim, shape))  # validated first: True == 1 in a cache key


# A granularity is immutable and the same few shapes recur (every layer, every round): building
# one costs as much as a small layer's selection, so the common ones are cached.
@functools.lru_cache(maxsize=1024)
def _entries(shape: tuple[int, ...]) -> Granularity:
    return _Entries(shape)


@functools.lru_cache(maxsize=1024)
def _slices(shape: tuple[int, ...], dim: int) -> Granularity:
    return _Slices(shape, dim)


def blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Granularity:
    """Tiles of ``block_shape`` (from index 0) are the units, and all compete.

    Per-entry scores become one per tile with :meth:`Granularity.pool`.

    Args:
      shape: the pruned tensor's shape.
      block_shape: one tile size per dim, each dividing the size.

    Returns:
      The granularity; its ``unit_shape`` is the grid of tiles.

    Example:
      >>> w = torch.tensor([[1.0, 1.0, 0.1, 0.1]])
      >>> tiles = blocks(w.shape, (1, 2))
      >>> prune_units(w, tiles, 1, tiles.pool(w.abs(), lambda t, dims: t.sum(dims)))
      tensor([[ True,  True, False, False]])

    Raises:
      TypeError: ``block_shape`` not a sequence of ints. ValueError: it does not tile ``shape``.
    """
    if isinstance(block_shape, int) or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_shape):
        raise TypeError(f"block_shape must be a sequence of ints, got {block_shape!r}")
    block_shape = tuple(block_shape)
    if len(block_shape) != len(shape):
        raise ValueError(f"block_shape {block_shape} must have one size per dim of the tensor of shape {tuple(shape)}")
    bad = [d for d, (s, b) in enumerate(zip(shape, block_shape)) if b < 1 or s % b]
    if bad:
        raise ValueError(
            f"block_shape {block_shape} does not tile shape {tuple(shape)}: dim(s) {bad} are not "
            "positive divisors of the sizes"
        )
    return _Blocks(shape, block_shape)


def groups(shape: Sequence[int], size: int, dim: int) -> Granularity:
    """Entries compete within runs of ``size`` consecutive entries along ``dim`` (N:M groups).

    Ties go to the lower index within a group.

    Args:
      shape: the pruned tensor's shape.
      size: entries per group (M); ``shape[dim]`` must be a multiple.
      dim: the dim along which the groups run.

    Returns:
      The granularity; its ``unit_shape`` is ``shape``.

    Example:
      >>> keep_per_pool(torch.ones(1, 4), groups((1, 4), 2, 1), 1, torch.tensor([[1.0, 2.0, 4.0, 3.0]]))
      tensor([[False,  True,  True, False]])

    Raises:
      TypeError: ``size`` or ``dim`` not an int. ValueError: ``size < 1``, a 0-d shape, or a size
      along ``dim`` not divisible by ``size``. IndexError: ``dim`` out of range.
    """
    check_group_size(size)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if len(shape) == 0:
        raise ValueError("N:M patterns need a tensor with at least one dim, got a 0-d tensor")
    dim = check_dim(dim, shape)
    if shape[dim] % size:
        raise ValueError(f"size {shape[dim]} of dim {dim} (shape {tuple(shape)}) is not divisible by group_size={size}")
    return _Groups(shape, size, dim)


def check_group_size(size) -> None:
    """Raise TypeError (not an int) or ValueError (below 1) for a bad N:M ``group_size``."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"group_size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"group_size must be positive, got group_size={size}")


def rows(shape: Sequence[int], dim: int = 0) -> Granularity:
    """Entries compete within each slice along ``dim``: per output row of a 2-D weight for ``dim=0``.

    Ties go to the lower index within a row (row-major over the other dims).

    Args:
      shape: the pruned tensor's shape.
      dim: the dim whose slices are the pools (0: the output rows of a ``Linear`` weight).

    Returns:
      The granularity; its ``unit_shape`` is ``shape``.

    Example:
      >>> w = torch.tensor([[1.0, 2.0], [4.0, 3.0]])
      >>> prune_units(w, rows(w.shape), 1, w)
      tensor([[False,  True],
              [ True, False]])

    Raises:
      TypeError/IndexError: a bad ``dim`` (or a 0-d shape).
    """
    return _Rows(shape, check_dim(dim, shape))


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
        return _prune_spread(
            like, gran, amount, scores, mask=mask, largest=largest, select_kept=select_kept, lazy=lazy, what=what
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
        here, local_gran, local_keep, local_scores = _local_pools(like, gran, scores, mask)
        if here.numel() == 0:  # an empty shard: no pool here
            return _backend.fresh(like, _backend.keep(like, mask), mask)
        return _backend.wrap(keep_per_pool(here, local_gran, count, local_scores, mask=local_keep), like)
    keep = as_keep(like, mask)
    alive = None if keep is None else gran.pools(gran.alive(keep))
    key = _unit_scores(gran, scores)
    kept = _select_units(gran, key, count, largest=True, alive=alive, k_max=count)
    return _finish(gran, gran.unpool(kept), keep)


# ----------------------------------------------------------------------------------------------
# The same selections over the backend seam: DTensor shards (and the hash stream, on any tensor).


def _prune_spread(like, gran, amount, scores, *, mask, largest, select_kept, lazy, what) -> torch.Tensor:
    """:func:`prune_units` for a DTensor ``like`` or hash-stream scores, through :mod:`funcprune._backend`.

    Entries: the exact global cut (ties to the lowest global index). Slices: the unit scores (one
    per channel, the same on every rank) go through the one-process kernel, only channel counts and
    the scores cross the wire. Rows and N:M groups: each rank selects in the pools it holds whole
    (an int amount is checked against the survivors of this rank's pools).
    """
    keep = _backend.keep(like, mask)
    if type(gran) is _Entries:
        if not isinstance(scores, HashStream):
            scores = scores() if callable(scores) else scores
        return _backend.global_cut(like, keep, amount, scores, largest=largest)
    if type(gran) is _Slices:
        dim, channels = gran.dim, like.shape[gran.dim]
        device = _device_of(like)
        if isinstance(scores, HashStream):
            seed = scores.seed(like)  # drawn before counting, on every rank alike
            scores = lambda: _backend.hash_channel_keys(seed, channels, device)  # noqa: E731
        units = scores
        alive = None if keep is None else _backend.channels_kept(keep, dim)
        column = torch.empty((channels, 1), dtype=torch.bool, device=device)
        unit_keep = prune_units(
            column,
            _slices(column.shape, 0),
            amount,
            (lambda: _backend.plain(units())) if callable(units) else _backend.plain(units),
            mask=None if alive is None else alive.view(channels, 1),
            largest=largest,
            select_kept=select_kept,
            lazy=lazy,
            what=what,
        )
        return _backend.spread_channels(unit_keep.view(channels), like, dim, keep)
    if isinstance(scores, HashStream):
        raise ValueError(
            f"the hash stream draws per entry or per channel, not per {type(gran).__name__[1:].lower()} unit"
        )
    here, local_gran, local_keep, local_scores = _local_pools(like, gran, scores, keep)
    if here.numel() == 0:  # an empty shard (more ranks than rows): no pool here, nothing to count
        return _backend.fresh(like, keep, mask)
    return _backend.wrap(
        prune_units(
            here,
            local_gran,
            amount,
            local_scores,
            mask=local_keep,
            largest=largest,
            select_kept=select_kept,
            lazy=lazy,
            what=what,
        ),
        like,
    )


def _device_of(like: torch.Tensor) -> torch.device:
    """The device of ``like``'s local shard (of ``like`` itself when plain)."""
    return _backend.shard_of(like, like, "scores").device


def _local_pools(like, gran, scores, mask):
    """``(local like, local granularity, local keep, local scores)`` for pools each rank holds whole.

    Raises:
      ValueError: a granularity other than rows/groups, or pools split across ranks by the placements.
    """
    keep = _backend.keep(like, mask)
    if not isinstance(gran, _Groups):
        raise ValueError(
            f"{type(gran).__name__[1:].lower()} granularity is not selected on DTensor shards "
            f"(entries, slices, rows and N:M groups are)"
        )
    offset, shape = _backend.local_block(like)
    for d in _backend.split_dims(like):
        whole = (
            d == gran.dim
            if type(gran) is _Rows
            else (d != gran.dim or (offset[d] % gran.size == 0 and shape[d] % gran.size == 0))
        )
        if not whole:
            raise ValueError(
                f"the {'rows' if type(gran) is _Rows else 'N:M groups'} along dim {gran.dim} are split "
                f"across ranks by the placements {tuple(like.placements)} (dim {d} is sharded); shard "
                f"the tensor so that every rank holds whole pools"
            )
    here = _backend.shard_of(like, like, "scores")
    local_gran = _Rows(tuple(shape), gran.dim) if type(gran) is _Rows else _Groups(tuple(shape), gran.size, gran.dim)
    if callable(scores):
        local_scores = lambda: _backend.shard_of(scores(), like, "scores")  # noqa: E731
    else:
        local_scores = _backend.shard_of(scores, like, "scores")
    return here, local_gran, _backend.shard_of(keep, like, "mask"), local_scores
