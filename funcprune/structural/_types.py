"""The data model of structural pruning: a group of tensor slices that lose the same channels."""

from __future__ import annotations

from typing import NamedTuple


class Member(NamedTuple):
    """One tensor's share of a group: which dim loses channels, and where the group's channels sit.

    Group channel ``c`` owns the indices ``offset + c*unit`` up to ``offset + (c+1)*unit - 1``
    along ``dim`` (``unit > 1``: a flattened C*H*W input, an attention head's ``head_dim``;
    ``offset > 0``: one part of a concat, a split or a fused q/k/v projection).
    """

    name: str
    dim: int
    offset: int = 0
    unit: int = 1
    buffer: bool = False


class Group(NamedTuple):
    """Tensor slices that must lose the same ``channels`` together (DepGraph's coupled group)."""

    channels: int
    members: tuple[Member, ...]
    kind: str = "channels"
    pools: int = 1
    exact: bool = True
    reason: str = ""
    min_channels: int = 1
