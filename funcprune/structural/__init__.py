"""Structural pruning: coupled channel groups, group masks, and shrinking to a smaller dense model."""

from ._groups import GroupReport, group_report, groups
from ._prune import group_importance, prune_groups
from ._shrink import ShrunkMultiheadAttention, kept_channels, shrink, shrink_to
from ._types import Group, Member

__all__ = ["Group", "GroupReport", "Member", "group_report", "groups", "prune_groups", "group_importance",
           "kept_channels", "shrink", "shrink_to", "ShrunkMultiheadAttention"]
