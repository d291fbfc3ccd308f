"""Granularities: what a unit of a selection is (entries kept or pruned together) and which units compete.

The public constructors are :func:`funcprune.select.entries`, :func:`~funcprune.select.slices`,
:func:`~funcprune.select.blocks`, :func:`~funcprune.select.groups` and :func:`~funcprune.select.rows`
(imported from here); the kernel (:mod:`funcprune.select`) counts, selects and spreads through the
interface of :class:`Granularity`, and its sharded half (:mod:`funcprune._select_sharded`) reads
which kind a granularity is (:class:`Entries`, :class:`Slices`, :class:`Groups`, :class:`Rows`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "Granularity",
    "Entries",
    "Slices",
    "Blocks",
    "Groups",
    "Rows",
    "entries",
    "slices",
    "blocks",
    "groups",
    "rows",
    "check_dim",
    "check_group_size",
]


def check_dim(dim, shape: Sequence[int]) -> int:
    """``dim`` made non-negative, or TypeError (not an int) / IndexError (out of range)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -len(shape) <= dim < len(shape) or not shape:
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(shape)}")
    return dim % len(shape)


def check_group_size(size) -> None:
    """Raise TypeError (not an int) or ValueError (below 1) for a bad N:M ``group_size``."""
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"group_size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"group_size must be positive, got group_size={size}")


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


class Entries(Granularity):
    pass


class Slices(Granularity):
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


class Blocks(Granularity):
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


class Groups(Granularity):
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


class Rows(Groups):
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
      >>> from funcprune.select import prune_units
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
      >>> from funcprune.select import prune_units
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
    return Entries(shape)


@functools.lru_cache(maxsize=1024)
def _slices(shape: tuple[int, ...], dim: int) -> Granularity:
    return Slices(shape, dim)


def blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Granularity:
    """Tiles of ``block_shape`` (from index 0) are the units, and all compete.

    Per-entry scores become one per tile with :meth:`Granularity.pool`.

    Args:
      shape: the pruned tensor's shape.
      block_shape: one tile size per dim, each dividing the size.

    Returns:
      The granularity; its ``unit_shape`` is the grid of tiles.

    Example:
      >>> from funcprune.select import prune_units
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
    return Blocks(shape, block_shape)


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
      >>> from funcprune.select import keep_per_pool
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
    return Groups(shape, size, dim)


def rows(shape: Sequence[int], dim: int = 0) -> Granularity:
    """Entries compete within each slice along ``dim``: per output row of a 2-D weight for ``dim=0``.

    Ties go to the lower index within a row (row-major over the other dims).

    Args:
      shape: the pruned tensor's shape.
      dim: the dim whose slices are the pools (0: the output rows of a ``Linear`` weight).

    Returns:
      The granularity; its ``unit_shape`` is ``shape``.

    Example:
      >>> from funcprune.select import prune_units
      >>> w = torch.tensor([[1.0, 2.0], [4.0, 3.0]])
      >>> prune_units(w, rows(w.shape), 1, w)
      tensor([[False,  True],
              [ True, False]])

    Raises:
      TypeError/IndexError: a bad ``dim`` (or a 0-d shape).
    """
    return Rows(shape, check_dim(dim, shape))
