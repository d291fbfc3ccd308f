"""The side-by-side comparisons: funcprune vs ``torch.nn.utils.prune`` on the same tensors.

A :class:`Case` holds two contenders. Each is a ``prepare()`` returning the call to time, whose
result ``masks(...)`` turns into ``{name: bool mask}``; :func:`check` runs both once and insists
the masks are identical before anything is timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import funcprune as fp

from . import _models

Masks = dict[str, torch.Tensor]


@dataclasses.dataclass
class Side:
    """One contender: ``prepare()`` gives the call to time; ``masks(result)`` its bool masks."""

    prepare: Callable[[], Callable[[], object]]
    masks: Callable[[object], Masks]


@dataclasses.dataclass
class Case:
    """One row of the table: funcprune's side, the reference side, and the ratio target."""

    group: str
    shapes: str
    ours: Side
    theirs: Side
    target: float | None = None
    seed: int | None = None  # reseed before each call (random methods)
    ours_label: str = "funcprune"
    theirs_label: str = "torch"
    check_fn: Callable[[], None] | None = None  # replaces the mask comparison (forward rows)
    device: torch.device = torch.device("cpu")
    min_sample: float = 0.02  # seconds per timed sample (equal-work forward rows average longer)
    tie_scores: Masks | None = None  # global L1: the masks may differ only at entries tied at the threshold
    note: str = ""
    count_faults: bool = False  # forward rows: report page faults per call of each side
    rounds: int | None = None  # at least this many rounds (not with --quick): near-equal rows need more


def check(case: Case) -> None:
    """Raise ``AssertionError`` unless both sides produce exactly the same masks (or outputs)."""
    if case.check_fn is not None:
        return case.check_fn()
    got = []
    for side in (case.ours, case.theirs):
        run = side.prepare()
        if case.seed is not None:
            torch.manual_seed(case.seed)
        got.append({name: m.bool() for name, m in side.masks(run()).items()})
    ours, theirs = got
    if ours.keys() != theirs.keys():
        raise AssertionError(f"{case.group} on {case.shapes}: masks cover {sorted(ours)} vs {sorted(theirs)}")
    bad = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    if bad and case.tie_scores is not None:
        case.note = _tie_only(case, ours, theirs, bad)
    elif bad:
        raise AssertionError(f"{case.group} on {case.shapes}: masks differ at {bad}")


def _tie_only(case: Case, ours: Masks, theirs: Masks, bad) -> str:
    """Accept masks that differ only in which entries *tied at the threshold* go; say how many."""
    scores = case.tie_scores
    count = lambda masks: sum(int((~m).sum()) for m in masks.values())  # noqa: E731
    tied = torch.cat([scores[name][ours[name] != theirs[name]].reshape(-1).double() for name in bad])
    kept = torch.cat([scores[name][ours[name]].reshape(-1).double() for name in ours])
    if count(ours) != count(theirs) or tied.numel() == 0 or not bool((tied == kept.min()).all()):
        raise AssertionError(f"{case.group} on {case.shapes}: masks differ at {bad}, not only at tied scores")
    return (
        f"same masks except which of the entries tied at |w| = {float(kept.min()):.6g} go "
        f"({tied.numel() // 2} swapped; funcprune takes the earliest, torch's topk order is unspecified)"
    )


def seeded(side: Side, seed: int | None) -> Side:
    """The same side, reseeding the global RNG right before each timed call."""
    if seed is None:
        return side

    def prepare():
        run = side.prepare()

        def seeded_run():
            torch.manual_seed(seed)
            return run()

        return seeded_run

    return Side(prepare, side.masks)


def _same(x):
    return x


def holders(weights: dict[str, torch.Tensor]) -> dict[str, nn.Module]:
    """One bare module per weight (sharing its storage), so torch's module API can prune it."""
    out = {}
    for name, w in weights.items():
        module = nn.Module()
        module.weight = nn.Parameter(w, requires_grad=False)
        out[name] = module
    return out


def _module_masks(mods: dict[str, nn.Module]) -> Masks:
    return {name: m.weight_mask for name, m in mods.items()}


def _torch_per_tensor(weights: dict[str, torch.Tensor], make_method: Callable[[], object]) -> Side:
    def run():
        method = make_method()
        # funcprune visits a dict's leaves in insertion (named_parameters) order, as this loop does,
        # so the random methods see the same draws.
        return {name: method.compute_mask(w, torch.ones_like(w)) for name, w in weights.items()}

    return Side(lambda: run, _same)


def _torch_iterative(weights, amount: float, rounds: int) -> Side:
    def run():
        masks = {}
        for name, w in weights.items():
            mask = torch_prune.L1Unstructured(amount).compute_mask(w, torch.ones_like(w))
            for _ in range(rounds - 1):
                container = torch_prune.PruningContainer()
                container._tensor_name = "weight"
                method = torch_prune.L1Unstructured(amount)
                method._tensor_name = "weight"
                container.add_pruning_method(method)
                mask = container.compute_mask(w, mask)
            masks[name] = mask
        return masks

    return Side(lambda: run, _same)


def _fp_iterative(weights, amount: float, rounds: int) -> Side:
    def run():
        masks = None
        for _ in range(rounds):
            masks = fp.prune(weights, fp.l1_unstructured, amount, masks=masks)
        return masks

    return Side(lambda: run, _same)


def _torch_global(weights, method, amount) -> Side:
    def prepare():
        mods = holders(weights)  # same leaf order as funcprune: the random draws line up
        pairs = [(m, "weight") for m in mods.values()]
        return lambda: (torch_prune.global_unstructured(pairs, pruning_method=method, amount=amount), mods)[1]

    return Side(prepare, _module_masks)


def functional_cases(model: str, quick: bool = False, device: torch.device = torch.device("cpu")) -> list[Case]:
    """Mask computations on the prunable weights of ``model``: per-layer, iterative, global."""
    w = {name: t.to(device) for name, t in _models.weights(model).items()}
    cases = [
        Case(
            "l1_unstructured 0.3, per layer",
            model,
            Side(lambda: lambda: fp.prune(w, fp.l1_unstructured, 0.3), _same),
            _torch_per_tensor(w, lambda: torch_prune.L1Unstructured(0.3)),
            0.33 if model == "resnet18" else None,
        ),
        Case(
            "global_unstructured L1 0.8",
            model,
            Side(lambda: lambda: fp.global_unstructured(w, 0.8), _same),
            _torch_global(w, torch_prune.L1Unstructured, 0.8),
            0.20 if model in ("resnet18", "resnet50") else None,
            tie_scores={name: t.abs() for name, t in w.items()},
        ),
    ]
    if model in ("resnet18", "mlp", "lenet"):
        cases.append(
            Case(
                "iterative: 5 rounds of L1 0.2",
                model,
                _fp_iterative(w, 0.2, 5),
                _torch_iterative(w, 0.2, 5),
                0.40 if model == "resnet18" else None,
            )
        )
    if model == "resnet18" or (model == "mlp" and not quick):
        cases += [
            Case(
                "ln_structured L2 0.3, dim 0",
                model,
                Side(lambda: lambda: fp.prune(w, fp.ln_structured, 0.3, 2, 0), _same),
                _torch_per_tensor(w, lambda: torch_prune.LnStructured(0.3, 2, dim=0)),
                1.0,
            ),
            Case(
                "random_unstructured 0.3",
                model,
                Side(lambda: lambda: fp.prune(w, fp.random_unstructured, 0.3), _same),
                _torch_per_tensor(w, lambda: torch_prune.RandomUnstructured(0.3)),
                1.0,
                seed=0,
            ),
            Case(
                "random_structured 0.3, dim 0",
                model,
                Side(lambda: lambda: fp.prune(w, fp.random_structured, 0.3, 0), _same),
                _torch_per_tensor(w, lambda: torch_prune.RandomStructured(0.3, dim=0)),
                1.0,
                seed=0,
            ),
        ]
        if not quick:
            cases.append(
                Case(
                    "global_unstructured random 0.5",
                    model,
                    Side(lambda: lambda: fp.global_unstructured(w, 0.5, method="random"), _same),
                    _torch_global(w, torch_prune.RandomUnstructured, 0.5),
                    1.0,
                    seed=0,
                )
            )
    if device.type != "cpu":
        for case in cases:
            case.shapes, case.device = f"{model} ({device.type})", device
    return cases
