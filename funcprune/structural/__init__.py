"""Structural pruning: coupled channel groups, group masks, and shrinking to a smaller dense model."""

from ._prune import group_importance, prune_groups
from ._shrink import ShrunkMultiheadAttention, kept_channels, shrink, shrink_to
from ._types import Group, Member

__all__ = ["Group", "Member", "prune_groups", "group_importance", "kept_channels", "shrink", "shrink_to",
           "ShrunkMultiheadAttention"]
