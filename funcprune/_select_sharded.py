"""The kernel's selections over the backend seam: DTensor shards (and the hash stream, on any tensor).

:func:`funcprune.select.prune_units` and :func:`~funcprune.select.keep_per_pool` hand a DTensor
``like`` (or :class:`~funcprune._backend.HashStream` scores) to this module, which selects without
gathering: entries by the exact global cut, slices by the one-process kernel on the channel scores,
rows and N:M groups within the pools each rank holds whole. Eager only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import _backend
from ._backend import HashStream
from ._granularity import Entries, Groups, Rows, Slices

__all__ = ["prune_spread", "device_of", "local_pools"]


def prune_spread(
    like, gran, amount, scores, *, mask, largest, select_kept, lazy, what, local: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """:func:`funcprune.select.prune_units` for a DTensor ``like`` or hash-stream scores, via :mod:`funcprune._backend`.

    Entries: the exact global cut (ties to the lowest global index). Slices: the unit scores (one
    per channel, the same on every rank) go through the one-process kernel, only channel counts and
    the scores cross the wire. Rows and N:M groups: each rank selects in the pools it holds whole
    (an int amount is checked against the survivors of this rank's pools). ``local`` is the one-process
    kernel (``prune_units`` itself), which runs on the channel scores and on each rank's pools.
    """
    keep = _backend.keep(like, mask)
    if type(gran) is Entries:
        if not isinstance(scores, HashStream):
            scores = scores() if callable(scores) else scores
        return _backend.global_cut(like, keep, amount, scores, largest=largest)
    if type(gran) is Slices:
        dim, channels = gran.dim, like.shape[gran.dim]
        device = device_of(like)
        if isinstance(scores, HashStream):
            seed = scores.seed(like)  # drawn before counting, on every rank alike
            scores = lambda: _backend.hash_channel_keys(seed, channels, device)  # noqa: E731
        units = scores
        alive = None if keep is None else _backend.channels_kept(keep, dim)
        column = torch.empty((channels, 1), dtype=torch.bool, device=device)
        unit_keep = local(
            column,
            Slices(column.shape, 0),
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
        raise ValueError(f"the hash stream draws per entry or per channel, not per {type(gran).__name__.lower()} unit")
    here, local_gran, local_keep, local_scores = local_pools(like, gran, scores, keep)
    if here.numel() == 0:  # an empty shard (more ranks than rows): no pool here, nothing to count
        return _backend.fresh(like, keep, mask)
    return _backend.wrap(
        local(
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


def device_of(like: torch.Tensor) -> torch.device:
    """The device of ``like``'s local shard (of ``like`` itself when plain)."""
    return _backend.shard_of(like, like, "scores").device


def local_pools(like, gran, scores, mask):
    """``(local like, local granularity, local keep, local scores)`` for pools each rank holds whole.

    Raises:
      ValueError: a granularity other than rows/groups, or pools split across ranks by the placements.
    """
    keep = _backend.keep(like, mask)
    if not isinstance(gran, Groups):
        raise ValueError(
            f"{type(gran).__name__.lower()} granularity is not selected on DTensor shards "
            f"(entries, slices, rows and N:M groups are)"
        )
    offset, shape = _backend.local_block(like)
    for d in _backend.split_dims(like):
        whole = (
            d == gran.dim
            if type(gran) is Rows
            else (d != gran.dim or (offset[d] % gran.size == 0 and shape[d] % gran.size == 0))
        )
        if not whole:
            raise ValueError(
                f"the {'rows' if type(gran) is Rows else 'N:M groups'} along dim {gran.dim} are split "
                f"across ranks by the placements {tuple(like.placements)} (dim {d} is sharded); shard "
                f"the tensor so that every rank holds whole pools"
            )
    here = _backend.shard_of(like, like, "scores")
    local_gran = Rows(tuple(shape), gran.dim) if type(gran) is Rows else Groups(tuple(shape), gran.size, gran.dim)
    if callable(scores):
        local_scores = lambda: _backend.shard_of(scores(), like, "scores")  # noqa: E731
    else:
        local_scores = _backend.shard_of(scores, like, "scores")
    return here, local_gran, _backend.shard_of(keep, like, "mask"), local_scores
