"""Structural pruning: coupled channel groups, group masks, and shrinking to a smaller dense model."""

from ._groups import GroupReport, group_report, groups
from ._kept import kept_channels
from ._prune import group_importance, prune_groups
from ._resize import ShrunkMultiheadAttention, register_resizer
from ._rules import register_rule
from ._shrink import shrink, shrink_to
from ._types import Group, Member

__all__ = [
    "Group",
    "GroupReport",
    "Member",
    "group_report",
    "groups",
    "prune_groups",
    "group_importance",
    "kept_channels",
    "shrink",
    "shrink_to",
    "ShrunkMultiheadAttention",
    "register_resizer",
    "register_rule",
]
