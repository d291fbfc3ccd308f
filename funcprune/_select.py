"""The selection kernel: the only place that knows how to pick "the k best units among the survivors".

A pruning method is its scores plus a *granularity* (as in jaxpruner, ``calculate_scores`` plus
``topk_fn``): :func:`prune_units` (an ``amount`` of units) and :func:`keep_per_pool` (a fixed
count per pool) do the counting, the selection and the broadcast back to the entries. A
granularity says what a unit is (the things kept or pruned together) and which units compete:

* :func:`entries`: every entry is a unit, all compete (unstructured methods);
* :func:`slices`: the slices along a dim (channels) are the units, all compete;
* :func:`blocks`: tiles of a block shape are the units, all compete;
* :func:`groups`: entries compete within runs of ``size`` consecutive entries along a dim (N:M);
* :func:`rows`: entries compete within each slice along a dim, e.g. per output row of a 2-D
  weight (one-shot LLM methods prune the same fraction of every row).

Survivors are tracked with a mask, never a sentinel value: whatever the surviving scores hold
(NaN, +-inf), exactly the requested number of survivors is selected. NaN ranks above ``+inf``
(as in ``torch.topk``); ``-0.0`` ties ``0.0``.

Selection, chosen by what is static:

* :func:`select`: one flat pool. With a Python-int ``k`` it is an unsorted ``topk`` (the same
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
* :func:`torch_order_select`: torch's own choice among ties (for :mod:`funcprune.compat`).

Many tensors at once (global pruning) is the radix selection of :mod:`funcprune._radix`, the
other half of the kernel. Apart from the eager-only paths named above (the threshold,
``torch_order_select`` with survivors), everything here runs under ``torch.func.vmap`` and on
``meta``: no shape depends on data.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence, Tuple, Union, overload

import torch
import torch.nn.utils.prune as _torch_prune

from ._amount import Amount, _is_concrete, as_number, check_count, drop_count, max_prune_count
from ._errors import shape_mismatch
from ._radix import _INF_BITS, _INT_VIEW

Count = int | torch.Tensor
Scores = torch.Tensor | Callable[[], torch.Tensor]

_FAST_MIN = 1 << 14  # below this, topk is as fast as the threshold path
_SAMPLE = 1 << 13  # sample size bracketing the k-th value: ~4% of the keys fall inside the bracket


@overload
def as_keep(scores: torch.Tensor, mask: None, what: str = ...) -> None: ...
@overload
def as_keep(scores: torch.Tensor, mask: torch.Tensor, what: str = ...) -> torch.Tensor: ...
@overload
def as_keep(scores: torch.Tensor, mask: Optional[torch.Tensor], what: str = ...) -> Optional[torch.Tensor]: ...
def as_keep(scores: torch.Tensor, mask: Optional[torch.Tensor], what: str = "mask") -> Optional[torch.Tensor]:
    """The existing mask as bool on the scores' device (None stays None), after a shape check."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(mask).__name__}")
    if mask.shape != scores.shape:
        raise shape_mismatch(what, mask.shape, "the scores", scores.shape)
    mask = mask.to(device=scores.device)
    return mask if mask.dtype == torch.bool else mask != 0


def count_kept(keep: torch.Tensor, dims=None) -> Union[int, torch.Tensor]:
    """Number of kept entries: a Python int on real eager tensors, a tensor otherwise."""
    total = keep.sum(dims) if dims is not None else keep.sum()
    return int(total) if _is_concrete(keep) else total


def check_dim(dim, shape: Sequence[int]) -> int:
    """``dim`` made non-negative, or TypeError (not an int) / IndexError (out of range)."""
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -len(shape) <= dim < len(shape) or not shape:
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(shape)}")
    return dim % len(shape)


def channel_norm(t: torch.Tensor, n, dim: int) -> torch.Tensor:
    """L``n`` norm of every slice of ``t`` along ``dim``, as ``torch.nn.utils.prune`` computes it.

    It is the running torch's own ``_compute_norm``, so channel scores, and which ``n`` are
    accepted, follow the installed torch bit for bit (torch 2.14 changed how ``'fro'`` and
    ``'nuc'`` are read: ``'fro'`` over 3 dims, a conv weight's channels, raises on 2.13 and is the
    2-norm on 2.14); should a torch release drop that helper, torch 2.14's rule.

    Args:
      t: the tensor (at least 1-D).
      n: a norm order (``p`` of :func:`torch.norm`: a number, ``inf``, ``'fro'``, ``'nuc'``).
      dim: the dim along which the channels lie.

    Returns:
      The norms, one per channel (a 1-D tensor of ``t.shape[dim]`` entries).

    Example:
      >>> channel_norm(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), 2, 0)
      tensor([5., 1.])
    """
    compute = getattr(_torch_prune, "_compute_norm", _channel_norm_2_14)
    return compute(t, n, dim)


def _channel_norm_2_14(t: torch.Tensor, n, dim: int) -> torch.Tensor:
    """torch 2.14's ``_compute_norm``: matrix norms for ``'nuc'`` (and ``'fro'`` over two dims), else vector norms."""
    dims = [d for d in range(t.dim()) if d != dim % t.dim()]
    if n == "nuc" or (n == "fro" and len(dims) == 2):
        return torch.linalg.matrix_norm(t, ord=n, dim=dims if len(dims) == 2 else (-2, -1))
    return torch.linalg.vector_norm(t, ord=2 if n == "fro" else n, dim=dims)


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
        itype = _INT_VIEW[key.element_size()]
        if key.dtype in _INF_BITS and _is_concrete(key) and not bool(torch.signbit(key).any()):
            # eager, no sign bit set (magnitudes, norms, uniform draws): the bits are ordered already
            return key.view(itype).clamp(max=_INF_BITS[key.dtype] + 1)  # every NaN -> one value above +inf
        bits = torch.where(key.isnan(), math.nan, key).view(itype)
        return torch.where(bits < 0, torch.iinfo(itype).min - bits, bits)  # negatives: -magnitude
    if key.dtype == torch.int64:
        info = torch.iinfo(torch.int64)
        return key.clamp(info.min + 1, info.max - 1)
    if key.dtype == torch.bool or key.is_complex():
        raise TypeError(f"scores must be real numbers, got dtype {key.dtype}")
    return key.to(torch.int32 if key.element_size() < 4 else torch.int64)


def _dead_last(key: torch.Tensor, alive: Optional[torch.Tensor], largest: bool, always: bool = False) -> torch.Tensor:
    """A key in which no dead entry ranks before a surviving one (``key`` itself if all survive
    and not ``always``, else integer keys from :func:`_ordered`)."""
    if alive is None and not always:
        return key
    ordered = _ordered(key)
    if alive is None:
        return ordered
    info = torch.iinfo(ordered.dtype)
    return ordered.masked_fill(~alive, info.min if largest else info.max)


def _select_by_threshold(key: torch.Tensor, k: int, largest: bool, filled: bool = False) -> Optional[torch.Tensor]:
    """Eager fast path of :func:`select`: the ``k`` extreme entries as ``key <= v`` (``key >= v``).

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


def select(key: torch.Tensor, k: Count, *, largest: bool, alive: Optional[torch.Tensor] = None,
           k_max: Optional[int] = None) -> torch.Tensor:
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
      >>> select(key, 2, largest=True, alive=torch.tensor([True, True, False, False]))
      tensor([ True,  True, False, False])
    """
    n = key.numel()
    if isinstance(k, int):
        if k == 0:
            return torch.zeros(n, dtype=torch.bool, device=key.device)
        if k < n and n >= _FAST_MIN and key.device.type == "cpu" and key.is_floating_point() and _is_concrete(key):
            filled = key if alive is None else key.masked_fill(~alive, _worst(largest))
            fast = _select_by_threshold(filled, k, largest, filled=alive is not None)
            if fast is not None:
                return fast
        idx = torch.topk(_dead_last(key, alive, largest), k, largest=largest, sorted=False).indices
        chosen = torch.zeros(n, dtype=torch.bool, device=key.device)
        # Filling a fresh tensor in place saves a copy; under vmap the indices are batched.
        return chosen.index_fill_(0, idx, True) if _is_concrete(idx) else chosen.index_fill(0, idx, True)
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


def select_per_pool(key: torch.Tensor, k: Count, *, largest: bool, alive: Optional[torch.Tensor] = None,
                    k_max: Optional[int] = None) -> torch.Tensor:
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
    def unit_shape(self) -> Tuple[int, ...]:
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

    def __init__(self, shape, block_shape: Tuple[int, ...]) -> None:
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
    """Every entry is a unit, and all compete (unstructured pruning)."""
    return _entries(tuple(shape))


def slices(shape: Sequence[int], dim: int) -> _Slices:
    """The slices along ``dim`` (channels) are the units, and all compete (torch's structured rules).

    Raises:
      ValueError: fewer than 2 dims (torch's message). TypeError/IndexError: a bad ``dim``.
    """
    shape = tuple(shape)
    if len(shape) <= 1:
        raise ValueError("Structured pruning can only be applied to multidimensional tensors. "
                         f"Found tensor of shape {shape} with {len(shape)} dims")
    return _slices(shape, check_dim(dim, shape))  # validated first: True == 1 in a cache key


# A granularity is immutable and the same few shapes recur (every layer, every round): building
# one costs as much as a small layer's selection, so the common ones are cached.
@functools.lru_cache(maxsize=1024)
def _entries(shape: Tuple[int, ...]) -> Granularity:
    return _Entries(shape)


@functools.lru_cache(maxsize=1024)
def _slices(shape: Tuple[int, ...], dim: int) -> _Slices:
    return _Slices(shape, dim)


def blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Granularity:
    """Tiles of ``block_shape`` (from index 0) are the units, and all compete.

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
        raise ValueError(f"block_shape {block_shape} does not tile shape {tuple(shape)}: dim(s) {bad} are not "
                         "positive divisors of the sizes")
    return _Blocks(shape, block_shape)


def groups(shape: Sequence[int], size: int, dim: int) -> Granularity:
    """Entries compete within runs of ``size`` consecutive entries along ``dim`` (N:M groups).

    Ties go to the lower index within a group.

    Raises:
      TypeError: ``size`` or ``dim`` not an int. ValueError: ``size < 1``, a 0-d shape, or a size
      along ``dim`` not divisible by ``size``. IndexError: ``dim`` out of range.
    """
    _check_group_size(size)
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if len(shape) == 0:
        raise ValueError("N:M patterns need a tensor with at least one dim, got a 0-d tensor")
    dim = check_dim(dim, shape)
    if shape[dim] % size:
        raise ValueError(f"size {shape[dim]} of dim {dim} (shape {tuple(shape)}) is not divisible by "
                         f"group_size={size}")
    return _Groups(shape, size, dim)


def _check_group_size(size) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"group_size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"group_size must be positive, got group_size={size}")


def check_group_counts(kept_per_group: int, group_size: int) -> None:
    """Raise for an N:M request that no tensor can satisfy (core and compat share this check).

    Raises:
      TypeError: a count that is not an int. ValueError: ``group_size < 1`` or ``kept_per_group``
      outside ``[0, group_size]``.
    """
    if not isinstance(kept_per_group, int) or isinstance(kept_per_group, bool):
        raise TypeError(f"kept_per_group must be an int, got {kept_per_group!r}")
    _check_group_size(group_size)
    if not 0 <= kept_per_group <= group_size:
        raise ValueError(f"kept_per_group must satisfy 0 <= kept_per_group <= group_size, got "
                         f"kept_per_group={kept_per_group}, group_size={group_size}")


def rows(shape: Sequence[int], dim: int = 0) -> Granularity:
    """Entries compete within each slice along ``dim``: per output row of a 2-D weight for ``dim=0``.

    Ties go to the lower index within a row (row-major over the other dims).

    Raises:
      TypeError/IndexError: a bad ``dim`` (or a 0-d shape).
    """
    return _Rows(shape, check_dim(dim, shape))


# ----------------------------------------------------------------------------------------------
# The kernel: count, select, spread.

def _finish(gran: Granularity, unit_keep: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """Kept units spread over the entries, on top of the old mask: a new tensor, never a view."""
    new = gran.spread(unit_keep)
    if keep is not None:
        return new & keep
    return new.contiguous() if gran.expands else new


def _finish_dropped(gran: Granularity, unit_dropped: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`_finish` from the dropped units (the kernel's own fresh tensor): one op fewer per call."""
    if gran.expands:  # negate the few units, not their broadcast (a strided negation is slow)
        return _finish(gran, unit_dropped.logical_not_(), keep)
    new = gran.spread(unit_dropped).logical_not_()
    return new if keep is None else new & keep


def unchanged(like: torch.Tensor, keep: Optional[torch.Tensor], mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Nothing pruned: ``keep`` (all ``True`` for None) as a new tensor, never the caller's ``mask`` itself."""
    if keep is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return keep.clone() if keep is mask else keep


def _unit_scores(gran: Granularity, scores: Scores) -> torch.Tensor:
    key = scores() if callable(scores) else scores
    if tuple(key.shape) != gran.unit_shape:
        raise ValueError(f"unit scores have shape {tuple(key.shape)}, expected {gran.unit_shape}")
    return key.detach() if key.requires_grad else key


def _select(gran: Granularity, key, k, *, largest, alive, k_max) -> torch.Tensor:
    """Selected units of the unit-shaped ``key`` (``alive`` pooled), as :meth:`Granularity.unpool` reads them."""
    if gran.index_ties:
        return select_per_pool(gran.pools(key), k, largest=largest, alive=alive, k_max=k_max)
    flat_alive = None if alive is None else alive.reshape(-1)
    return select(key.reshape(-1), k, largest=largest, alive=flat_alive, k_max=k_max)  # one pool: flat


def prune_units(like: torch.Tensor, gran: Granularity, amount: Amount, scores: Scores, *,
                mask: Optional[torch.Tensor] = None, largest: bool = False, select_kept: bool = False,
                lazy: bool = True, what: str = "parameters") -> torch.Tensor:
    """A new keep mask with ``amount`` of the alive units of every pool pruned, by their scores.

    The one selection path of every amount-based method. ``amount`` counts (int) or is a fraction
    (float, ``round(amount * alive)``) of the alive units of each pool: a unit is alive while one
    of its entries survives in ``mask``. An int above a pool's alive units raises ``ValueError``
    in eager calls; under ``vmap`` or on ``meta`` it prunes every survivor (a tensor amount is
    clamped to ``[0, alive]``).

    Args:
      like: the tensor being pruned (gives shape and device).
      gran: the granularity: :func:`entries`, :func:`slices`, :func:`blocks`, :func:`groups` or
        :func:`rows` of ``like.shape``.
      amount: int, float in ``[0, 1]``, or 0-d tensor (already validated by the method).
      scores: one score per unit (a tensor of ``gran.unit_shape``), or a callable returning it,
        called once the count is valid.
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
    keep = as_keep(like, mask)
    alive = None if keep is None else gran.pools(gran.alive(keep))
    units = gran.pool_size
    n_alive: Union[int, torch.Tensor]
    if alive is None:
        n_alive = units
    elif gran.n_pools == 1:
        n_alive = count_kept(alive)
    else:  # one count per pool; an int amount is checked against the pool with the fewest survivors
        n_alive = alive.sum(-1)
        number = as_number(amount)
        if _is_concrete(n_alive) and gran.n_pools and isinstance(number, int):
            check_count(number, int(n_alive.min()), what)
    amount, k = drop_count(amount, n_alive, what)
    if not lazy and callable(scores):
        scores = scores()
    if isinstance(k, int) and k == 0:
        return unchanged(like, keep, mask)
    key = _unit_scores(gran, scores)
    if select_kept:
        kept = _select(gran, key, n_alive - k, largest=not largest, alive=alive, k_max=units)
    else:
        dropped = _select(gran, key, k, largest=largest, alive=alive, k_max=max_prune_count(amount, units))
        return _finish_dropped(gran, gran.unpool(dropped), keep)
    return _finish(gran, gran.unpool(kept), keep)


def keep_per_pool(like: torch.Tensor, gran: Granularity, count: int, scores: Scores, *,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A new keep mask that keeps the ``count`` alive units of largest score in every pool (N:M).

    A pool with fewer survivors keeps just those. Ties follow the granularity (lower index for
    :func:`groups` and :func:`rows`).

    Example:
      >>> w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, 1.0, 1.0]])
      >>> keep_per_pool(w, groups(w.shape, 4, -1), 2, w.abs())
      tensor([[False,  True,  True, False,  True,  True, False, False]])
    """
    keep = as_keep(like, mask)
    alive = None if keep is None else gran.pools(gran.alive(keep))
    key = _unit_scores(gran, scores)
    kept = _select(gran, key, count, largest=True, alive=alive, k_max=count)
    return _finish(gran, gran.unpool(kept), keep)


def torch_order_select(key: torch.Tensor, k: int, *, largest: bool, alive: Optional[torch.Tensor] = None,
                       unique_first: bool = True) -> torch.Tensor:
    """Bool mask (``key``'s shape) of the ``k`` alive entries ``torch.nn.utils.prune`` picks, ties included.

    torch's CPU ``topk`` (``aten/src/ATen/native/TopKImpl.h``) runs ``std::nth_element`` (or
    ``std::partial_sort`` when ``64 * k <= n``) over ``(value, index)`` pairs with a comparator
    that looks at the values only (NaN the largest). Which of several equal values it keeps is
    therefore whatever those algorithms leave, and depends on every value of the vector it is
    given. torch gives it the alive entries in index order (``t[mask == 1]``, raveled); so does
    this function, so the choice is torch's, not just the count. Where no tie straddles the cut
    the result is the same for every exact selection, and the certified threshold of
    :func:`select` answers without ``topk``. ``sorted`` does not change the set ``topk`` picks
    (only the order of the first ``k``), so it is left off. Eager tensors only for ``alive``
    (boolean indexing); on ``meta`` or under transforms it is :func:`select`. Pass
    ``unique_first=False`` when a tie is known to straddle the cut (skips the threshold try).

    Example:
      >>> torch_order_select(torch.tensor([5.0, 1.0, 2.0, 1.0]), 1, largest=False,
      ...                    alive=torch.tensor([True, False, True, True]))
      tensor([False, False, False,  True])
    """
    if not _is_concrete(key) or (alive is not None and not _is_concrete(alive)):
        return select(key.reshape(-1), k, largest=largest,
                      alive=None if alive is None else alive.reshape(-1)).view(key.shape)
    flat = key.reshape(-1)
    live = None if alive is None else alive.reshape(-1)
    cand = flat if live is None else flat[live]  # the vector torch's topk sees
    if k == 0:
        chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device)
    else:
        picked = None
        if unique_first and 0 < k < cand.numel() and cand.numel() >= _FAST_MIN and cand.device.type == "cpu":
            picked = _select_by_threshold(cand, k, largest)  # only when the answer is unique
        if picked is None:
            idx = torch.topk(cand, k, largest=largest, sorted=False).indices
            picked = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device).index_fill_(0, idx, True)
        chosen = picked
    if live is None:
        return chosen.view(key.shape)
    return torch.zeros_like(live).masked_scatter_(live, chosen).view(key.shape)
