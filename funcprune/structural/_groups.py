"""Coupled channel groups of a module: the joined channel spaces of ``_trace`` as ``Group`` lists."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from ._args import UNSET, as_args, as_kwargs, check_module, renamed
from ._trace import run
from ._types import Group, Member


class GroupReport(NamedTuple):
    """Everything :func:`group_report` found.

    ``groups``: prunable and exact; ``inexact``: prunable, but a normalization across the channels
    makes removing differ from zeroing (``Group.reason`` names it); ``excluded``: channel spaces
    that must not be pruned, ``Group.reason`` says why (model output, barrier op, grouped-conv
    input, one channel...).
    """

    groups: tuple[Group, ...]
    inexact: tuple[Group, ...]
    excluded: tuple[Group, ...]


def group_report(
    module: torch.nn.Module,
    args: Any = UNSET,
    kwargs: dict[str, Any] | None = UNSET,
    *,
    example_args: Any = UNSET,
    example_kwargs: Any = UNSET,
) -> GroupReport:
    """Trace ``module`` once and sort its channel spaces into prunable, inexact and excluded groups.

    Args:
        module: the model; traced as ``torch.export`` (``strict=False``) traces it in eval mode without
            grad (its train/eval flags are restored); its parameters are not read or changed.
        args: example positional inputs, as ``functional_call`` takes them: a tuple is the
            arguments, anything else (a tensor, a list) the one argument.
        kwargs: optional keyword inputs.
        example_args, example_kwargs: the old names of ``args`` and ``kwargs`` (deprecated: a
            ``DeprecationWarning``; they go in the next minor release).

    Returns:
        A :class:`GroupReport`.

    Raises:
        NotImplementedError: an op without a channel rule touches channels (names the op and the
            submodule), or the model cannot be traced.
    """
    args = renamed("group_report", args, example_args, "args", "example_args", UNSET)
    kwargs = renamed("group_report", kwargs, example_kwargs, "kwargs", "example_kwargs", None)
    check_module("funcprune.structural.groups", module)
    if args is UNSET:
        raise TypeError("funcprune.structural.groups: missing the example inputs args (a tuple of positional inputs)")
    flow = run(module, as_args(args), as_kwargs("funcprune.structural.groups", kwargs))
    good: list[Group] = []
    inexact: list[Group] = []
    excluded: list[Group] = []
    seen = set()
    for space in flow.spaces:
        root = flow.find(space)
        if (
            id(root) in seen
            or root.parts is not None
            or not root.members
            or not (root.producer or (root.pinned and root.origin is None))
        ):
            continue  # unclaimed parameter dims (kernel taps, vocab rows) are no channel space
        seen.add(id(root))
        reasons = list(root.pinned)
        fold = root.fold if root.channels % root.fold == 0 else 1
        if fold != root.fold:
            reasons.append(f"{root.channels} channels do not split into {root.fold} conv groups")
        channels = root.channels // fold
        members = []
        for name, dim, off, length, buf, local in dict.fromkeys(root.members):
            if local:  # a grouped conv's in dim: the positions local to one conv group
                members.append(Member(name, dim, off, length // channels, buf))
                continue
            for p in range(fold):  # every conv group loses the same local positions
                members.append(Member(name, dim, off + p * length // fold, length // root.channels, buf))
        members = sorted(members, key=lambda m: (m.buffer, m.name, m.dim, m.offset))
        kind = "heads" if "heads" in root.kinds else "channels"
        if channels < 2:
            reasons.append("one channel")
        if root.pools > 1 and channels % root.pools:
            reasons.append(f"{channels} channels do not split into {root.pools} equal runs")
        exact = not root.inexact
        reason = "; ".join(reasons or root.inexact)
        group = Group(channels, tuple(members), kind, root.pools, exact, reason)
        (excluded if reasons else good if exact else inexact).append(group)
    return GroupReport(tuple(good), tuple(inexact), tuple(excluded))


def groups(
    module: torch.nn.Module,
    args: Any = UNSET,
    kwargs: dict[str, Any] | None = UNSET,
    *,
    inexact: bool = False,
    example_args: Any = UNSET,
    example_kwargs: Any = UNSET,
) -> list[Group]:
    """The coupled channel groups of ``module``: tensor slices that must lose the same channels.

    Args:
        module: the model (traced once into its ATen graph; see :func:`group_report`).
        args: example positional inputs: a tuple is the arguments, anything else the one argument.
        kwargs: optional keyword inputs.
        inexact: also return groups whose channels a normalization spans (LayerNorm over a
            transformer's residual width: ``Group.exact`` is False, ``Group.reason`` says where).
        example_args, example_kwargs: the old names of ``args`` and ``kwargs`` (deprecated).

    Returns:
        A list of :class:`~funcprune.structural.Group`, in the order of their producers' parameters.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, or ``kwargs`` is not a dict.
        NotImplementedError: an op without a channel rule touches channels (the message names the
            ATen op and the submodule), or the model cannot be traced (names the model class; the
            tracer's error is chained).

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> (g,) = groups(net, (torch.randn(1, 3, 8, 8),))
        >>> g.channels, sorted(m.name for m in g.members)
        (8, ['0.bias', '0.weight', '1.bias', '1.running_mean', '1.running_var', '1.weight', '3.weight'])
    """
    args = renamed("groups", args, example_args, "args", "example_args", UNSET)
    kwargs = renamed("groups", kwargs, example_kwargs, "kwargs", "example_kwargs", None)
    report = group_report(module, args, kwargs)
    return list(report.groups) + (list(report.inexact) if inexact else [])
