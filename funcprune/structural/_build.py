"""Plan and build: slice every member of every group at the kept channels in a deep copy, then resize."""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
import torch.nn as nn

from .._masking import masked
from ._prune import check_groups
from ._resize import resizer_for
from ._types import Group

__all__ = ["build", "owners_of", "plan_slices"]


def owners_of(module: nn.Module) -> dict[str, list[tuple[str, str]]]:
    """``{name: [(submodule path, local name), ...]}`` for every param and buffer, tied aliases
    listed under the name ``named_parameters()`` (``named_buffers()``) gives them."""
    out: dict[str, list[tuple[str, str]]] = {}
    for named in (module.named_parameters, module.named_buffers):
        first: dict[int, str] = {}
        for name, t in named(remove_duplicate=False):
            path, _, local = name.rpartition(".")
            key = first.setdefault(id(t), name)
            out.setdefault(key, []).append((path, local))
    return out


def plan_slices(module: nn.Module, entries: list[tuple[Group, list[int]]]):
    """``{(name, dim): kept indices}`` of every tensor a group slices, checked against the module."""
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    try:
        checked = check_groups([g for g, _ in entries], shapes, "parameters and buffers of the module", buffers=True)
    except KeyError as err:  # a member naming no tensor of this module: a value that does not fit it
        raise ValueError(err.args[0]) from err
    lines: dict[tuple[str, int], torch.Tensor] = {}
    for group, (_, kept) in zip(checked, entries):
        if len(kept) == group.channels:
            continue
        keep = torch.zeros(group.channels, dtype=torch.bool)
        keep[kept] = True
        for m in group.members:
            line = lines.setdefault((m.name, m.dim), torch.ones(shapes[m.name][m.dim], dtype=torch.bool))
            line[m.offset : m.offset + group.channels * m.unit] &= keep.repeat_interleave(m.unit)
    return {key: line.nonzero().flatten() for key, line in lines.items()}


def build(
    module: nn.Module,
    entries: list[tuple[Group, list[int]]],
    params: dict[str, torch.Tensor] | None,
    masks: dict[str, torch.Tensor],
) -> nn.Module:
    """A deep copy of ``module`` with every group's members sliced at its kept channels, ``params`` in place of
    the module's values, ``masks`` applied, and the owners' attributes resized (unknown owners refused first)."""
    plan = plan_slices(module, entries)
    owners = owners_of(module)
    changed_paths = {path for name, _ in plan for path, _ in owners[name]}
    for path in sorted(changed_paths):  # refuse unknown owners before anything is built
        sub = module.get_submodule(path)
        if resizer_for(sub) is None:
            names = sorted(name for name, _ in plan if any(p == path for p, _ in owners[name]))
            raise ValueError(
                f"shrink does not know how to resize submodule {path or '<root>'!r} of type "
                f"{type(sub).__module__}.{type(sub).__qualname__}, which owns {names}: register how its "
                "attributes follow its tensors' shapes with funcprune.structural.register_resizer"
            )
    own: dict[str, torch.Tensor] = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    params = params or {}
    touched = set(params) | set(masks) | {name for name, _ in plan}
    # the copy shares the tensors about to be replaced (each alias of each is replaced below): no copying them
    new = copy.deepcopy(module, {id(own[name]): own[name] for name in touched})
    with torch.no_grad():
        for name in touched:
            value, mask = params.get(name, own[name]).detach(), masks.get(name)
            fresh = False
            for (tname, dim), index in plan.items():  # slice first: mask only what is kept
                if tname == name:
                    value = value.index_select(dim, index.to(value.device))
                    mask = None if mask is None else mask.index_select(dim, index.to(mask.device))
                    fresh = True
            if mask is not None and not bool(mask.all()):  # group masks keep every entry left: nothing to zero
                value, fresh = masked(value, mask.to(value.device)), True
            value = value if fresh else value.clone()
            if isinstance(own[name], nn.Parameter):  # one Parameter for all tied aliases
                value = nn.Parameter(value, requires_grad=own[name].requires_grad)
            for path, local in owners[name]:
                sub = new.get_submodule(path)
                # value is a Parameter exactly where own[name] is one (in _parameters); the stubs see a Tensor
                (sub._parameters if local in sub._parameters else sub._buffers)[local] = cast(Any, value)
    # owners and their ancestors (an attention module follows its projections' widths), deepest first
    for path, sub in sorted(new.named_modules(), key=lambda item: -item[0].count(".") - bool(item[0])):
        resize = resizer_for(sub)
        if resize is not None and any(p == path or not path or p.startswith(path + ".") for p in changed_paths):
            resize(sub, path)
    return new
