"""Structural pruning: coupled channel groups (and, with shrink, smaller dense models)."""

from ._groups import GroupReport, group_report, groups
from ._types import Group, Member

__all__ = ["Group", "GroupReport", "Member", "group_report", "groups"]
