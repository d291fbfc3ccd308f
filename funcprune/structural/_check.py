"""The numerical check of a shrink: the smaller model against the masked one, on the example inputs."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..call import functional_call
from ._args import fresh
from ._build import build
from ._prune import describe

__all__ = ["check_shrink"]


def _modes(module: nn.Module) -> dict[str, bool]:
    return {path: sub.training for path, sub in module.named_modules()}


def _restore(module: nn.Module, modes: dict[str, bool]) -> None:
    for path, sub in module.named_modules():
        sub.training = modes[path]


_SCALARS = (type(None), bool, int, float, complex, str, torch.dtype, torch.device)


def _leaves(out: Any, path: str = "output") -> list[tuple[str, Any]]:
    """``(path, value)`` of every tensor and scalar in an output; an object the check cannot look inside raises."""
    if isinstance(out, (torch.Tensor,) + _SCALARS):
        return [(path, out)]
    if isinstance(out, Mapping):  # transformers' ModelOutput is an OrderedDict (and a dataclass)
        items = list(out.items())
    elif isinstance(out, (list, tuple)):
        items = list(enumerate(out))
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    elif type(out) in torch.utils._pytree.SUPPORTED_NODES:  # a registered container
        children, _ = torch.utils._pytree.SUPPORTED_NODES[type(out)].flatten_fn(out)
        items = list(enumerate(children))
    elif (
        hasattr(out, "__dict__")
        and not callable(out)
        and not isinstance(out, (nn.Module, type))
        and path.count(".") < 8
    ):  # a plain object (transformers' caches): its attributes
        items = sorted(vars(out).items())
    else:
        raise ValueError(
            f"shrink: the check cannot compare {path} of type {type(out).__module__}."
            f"{type(out).__qualname__} (not a tensor, a scalar, or a tuple, list, dict, dataclass or "
            "registered pytree node of those); pass check=False to shrink unchecked"
        )
    return [
        leaf
        for key, value in items
        for leaf in _leaves(
            value,
            f"{path}.{key}"
            if hasattr(out, "__dict__")
            and not isinstance(out, (Mapping, list, tuple))
            and not dataclasses.is_dataclass(out)
            else f"{path}[{key!r}]",
        )
    ]


def _difference(ref: Any, got: Any, rtol: float, atol: float) -> str | None:
    """None when the outputs agree, else a description of the largest difference."""
    a, b = _leaves(ref), _leaves(got)
    if not any(isinstance(x, torch.Tensor) for _, x in a):
        raise ValueError(
            f"shrink: the model's output ({type(ref).__name__}) holds no tensor for the check to "
            "compare; pass check=False to shrink unchecked"
        )
    if [p for p, _ in a] != [p for p, _ in b]:
        return f"the shrunk model's output is laid out differently ({len(b)} leaves, the masked model's {len(a)})"
    for (path, x), (_, y) in zip(a, b):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            if type(x) is not type(y) or x != y:
                return f"{path} is {y!r}, the masked model's {x!r}"
            continue
        if x.shape != y.shape:
            return f"{path} has shape {tuple(y.shape)}, the masked model's {tuple(x.shape)}"
        if not x.is_floating_point() and not x.is_complex():
            if not torch.equal(x, y):
                return f"{path} (dtype {x.dtype}) differs"
            continue
        x, y = x.detach().double(), y.detach().double()
        scale = float(x.abs().nan_to_num(nan=0.0, posinf=0.0).max()) if x.numel() else 0.0
        if not torch.allclose(y, x, rtol=rtol, atol=atol * scale, equal_nan=True):
            err = float((y - x).abs().nan_to_num(nan=math.inf).max())
            return (
                f"{path} differs by up to {err:.3g} ({err / scale if scale else math.inf:.3g} of its largest "
                f"reference magnitude {scale:.3g})"
            )
    return None


class _Failed(Exception):
    """The shrunk model raised on the example inputs."""


def _outputs(model: Any, args, kwargs) -> Any:
    try:
        return model(*fresh(args), **fresh(kwargs))
    except Exception as err:  # a wrong shrink often fails on shapes
        raise _Failed(f"the shrunk model cannot run on the example inputs: {type(err).__name__}: {err}") from err


def _compare(ref: Any, new: nn.Module, args, kwargs, rtol: float, atol: float) -> str | None:
    try:
        return _difference(ref, _outputs(new, args, kwargs), rtol, atol)
    except _Failed as err:
        return str(err)


def _without(masks: dict[str, torch.Tensor], entries, inexact: list[int]) -> dict[str, torch.Tensor]:
    """``masks`` with the pruned channels of the ``inexact`` entries kept again (the pruned channels of
    every other entry stay masked, also where the two cross in one tensor)."""
    lines: dict[tuple[str, int, bool], torch.Tensor] = {}
    for i, (g, kept) in enumerate(entries):
        if len(kept) == g.channels:
            continue
        gone = torch.ones(g.channels, dtype=torch.bool)
        gone[kept] = False
        for m in g.members:
            if m.buffer or m.name not in masks:
                continue
            key = (m.name, m.dim, i not in inexact)
            line = lines.setdefault(key, torch.zeros(masks[m.name].shape[m.dim], dtype=torch.bool))
            line[m.offset : m.offset + g.channels * m.unit] |= gone.repeat_interleave(m.unit)
    out = dict(masks)
    for exact_pass in (False, True):  # first keep the inexact channels, then re-prune the exact ones
        for (name, dim, exact), line in lines.items():
            if exact != exact_pass:
                continue
            mask = out[name]
            shape = [1] * mask.dim()
            shape[dim] = -1
            line = line.to(mask.device).view(shape)
            keep = mask if mask.dtype == torch.bool else mask != 0
            keep = (keep & ~line) if exact else (keep | line)
            out[name] = keep if mask.dtype == torch.bool else keep.to(mask.dtype)
    return out


def _partial(groups, entries, masks) -> list[str]:
    """The pruned groups some of whose param members have no mask: there the masked model keeps the channels."""
    out = []
    for i, (g, kept) in enumerate(entries):
        bare = sorted({m.name for m in g.members if not m.buffer and m.name not in masks})
        if len(kept) < g.channels and bare:
            out.append(f"{describe(i, g)}: {bare[:4]}{' ...' if len(bare) > 4 else ''}")
    return out


def check_shrink(module, new, groups, entries, params, masks, args, kwargs, rtol, atol) -> None:
    """Raise ``ValueError`` unless ``new`` matches the masked ``module`` (inexact groups: warn); see ``shrink``."""
    inexact = [i for i, (g, (_, kept)) in enumerate(zip(groups, entries)) if not g.exact and len(kept) < g.channels]
    old_modes, new_modes = _modes(module), _modes(new)
    try:
        module.eval()
        new.eval()
        with torch.no_grad():
            params = params or dict(module.named_parameters())
            strict_masks, strict = masks, new
            if inexact:  # the exact groups are checked strictly, the inexact ones left unpruned on both sides
                strict_masks = _without(masks, entries, inexact)
                strict = build(
                    module, [e for i, e in enumerate(entries) if i not in inexact], params, strict_masks
                ).eval()
            ref = functional_call(module, params, fresh(args), fresh(kwargs), masks=strict_masks)
            diff = _compare(ref, strict, args, kwargs, rtol, atol)
            if diff is None:
                if inexact:
                    full = functional_call(module, params, fresh(args), fresh(kwargs), masks=masks)
                    try:
                        rest = _difference(full, _outputs(new, args, kwargs), rtol, atol)
                    except _Failed as err:  # never "differs, as expected": a model that cannot run is an error
                        raise ValueError(
                            f"shrink: {err} (with the inexact group(s) {inexact} pruned; the exact "
                            "groups alone run and match): a module whose width the shrink does not "
                            "follow, e.g. a norm without an affine weight. Pass check=False to get the "
                            "module anyway."
                        ) from err.__cause__
                    if rest is not None:
                        warnings.warn(
                            f"shrink: the shrunk model differs from the masked model ({rest}), as expected "
                            f"for the inexact group(s) {inexact} it prunes (the exact groups alone match): "
                            + "; ".join(f"{i}: {groups[i].reason or groups[i].kind}" for i in inexact),
                            stacklevel=3,
                        )
                return
            culprits = []
            for i, (g, kept) in enumerate(entries):
                if len(kept) == g.channels or i in inexact:
                    continue
                alone = build(module, [(g, kept)], params, strict_masks).eval()
                one = _compare(ref, alone, args, kwargs, rtol, atol)
                if one is not None:
                    culprits.append(f"{describe(i, g)}: {one}")
    finally:
        _restore(module, old_modes)
        _restore(new, new_modes)
    partial = _partial(groups, entries, masks)
    raise ValueError(
        "shrink: the shrunk model's outputs differ from the masked model's: "
        + diff
        + (f" (with the inexact group(s) {inexact} left unpruned on both sides)" if inexact else "")
        + ". "
        + (
            "Groups whose shrink alone differs: " + "; ".join(culprits)
            if culprits
            else "No single group's shrink differs alone: the groups interact"
        )
        + (
            ". The masks do not cover every param member of the groups they prune, so the masked model "
            "still has those channels (a zeroed conv output channel is not removed: a BatchNorm's shift "
            "or a bias makes it non-zero downstream); members without a mask: "
            + "; ".join(partial)
            + ". Masks made per tensor (fp.prune(..., ln_structured)) are not group-consistent: make "
            "them with funcprune.structural.prune_groups, which masks every member of a group"
            if partial
            else ""
        )
        + ". Pass check=False to get the module anyway."
    )
