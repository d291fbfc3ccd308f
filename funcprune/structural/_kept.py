"""Kept channels: which channels of each group the masks keep, read once and carried as plain data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import _pytree
from .._pytree import Tree
from ._prune import channel_any, check_groups, describe
from ._types import Group, Member

__all__ = ["as_group", "kept_channels"]


def kept_channels(masks: Tree, groups: Sequence[Group]) -> list[dict[str, Any]]:
    """Per group, the channels the masks keep, as plain data (JSON- and ``torch.save``-able).

    A channel is kept in a member when any entry of its slice survives the member's mask; every
    param member with a mask must agree (members without one have no say; a group none of whose
    members is masked keeps every channel). The entries describe their group fully, so
    :func:`shrink_to` needs nothing else to redo the shrink on a freshly built model.

    Args:
      masks: a masks tree (e.g. from :func:`funcprune.structural.prune_groups`).
      groups: the groups the masks were made for.

    Returns:
      One dict per group: ``{"channels": int, "kind": str, "pools": int, "members": [[name, dim,
      offset, unit, buffer], ...], "kept": [channel indices, increasing]}``.

    Raises:
      ValueError: two members of a group keep different channels (naming both and the channels),
        or a group does not fit a mask's shape (checked as :func:`funcprune.structural.prune_groups`
        checks groups against params).

    Example:
      >>> from funcprune.structural import Group, Member
      >>> g = Group(3, (Member("a.weight", 0), Member("b.weight", 1)))
      >>> masks = {"a.weight": torch.tensor([[True], [False], [True]]), "b.weight": torch.tensor([[True, False, True]])}
      >>> kept_channels(masks, [g])[0]["kept"]
      [0, 2]
    """
    named = {name: mask for name, mask in _pytree.named_leaves(masks).items() if isinstance(mask, torch.Tensor)}
    shapes = {name: tuple(mask.shape) for name, mask in named.items()}
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, Group):
            raise TypeError(f"groups[{i}] must be a funcprune.structural.Group, got {type(group).__name__}")
        # members without a mask have no say: check and read only those that have one
        mine = group._replace(members=tuple(m for m in group.members if not m.buffer and m.name in named))
        kept, first = None, None
        if mine.members:
            try:
                (mine,) = check_groups([mine], shapes, "masks")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise type(err)(f"groups[{i}]: {err}") from err
            for m in mine.members:
                keep = named[m.name]
                keep = keep if keep.dtype == torch.bool else keep != 0
                live = channel_any(keep, m, group.channels)
                if kept is None:
                    kept, first = live, m
                elif not torch.equal(kept, live):
                    diff = (kept != live).nonzero().flatten().tolist()
                    assert first is not None  # set together with kept
                    raise ValueError(
                        f"{describe(i, group)}: member {m.name!r} (dim {m.dim}) and member {first.name!r} "
                        f"(dim {first.dim}) keep different channels (they differ at channels {diff[:8]}"
                        f"{' ...' if len(diff) > 8 else ''}); masks from prune_groups agree across a group"
                    )
        indices = list(range(group.channels)) if kept is None else kept.nonzero().flatten().tolist()
        out.append(
            {
                "channels": group.channels,
                "kind": group.kind,
                "pools": group.pools,
                "members": [[m.name, m.dim, m.offset, m.unit, m.buffer] for m in group.members],
                "kept": indices,
            }
        )
    return out


def as_group(entry: dict[str, Any], index: int) -> tuple[Group, list[int]]:
    """An entry of :func:`kept_channels` (or its JSON round trip) as ``(group, kept)``, validated."""
    try:
        members = tuple(Member(str(n), int(d), int(o), int(u), bool(b)) for n, d, o, u, b in entry["members"])
        group = Group(int(entry["channels"]), members, str(entry.get("kind", "channels")), int(entry.get("pools", 1)))
        kept = [int(c) for c in entry["kept"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"kept[{index}] is not an entry of kept_channels(): {err!r}") from err
    if not kept:
        raise ValueError(f"kept[{index}] ({describe(index, group)}) keeps no channel")
    if kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= group.channels:
        raise ValueError(
            f"kept[{index}] ({describe(index, group)}): kept channels must be increasing indices in "
            f"[0, {group.channels}), got {kept[:8]}{' ...' if len(kept) > 8 else ''}"
        )
    per = group.channels // group.pools
    counts = [sum(1 for c in kept if c // per == p) for p in range(group.pools)]
    if len(set(counts)) > 1:
        raise ValueError(
            f"kept[{index}] ({describe(index, group)}): {group.pools} pools need an equal count of "
            f"kept channels each, got {counts}"
        )
    return group, kept
