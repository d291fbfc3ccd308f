"""Comparisons on real modules: the compat layer vs torch, and masked forward / training steps.

The compat rows make the very calls a user of ``torch.nn.utils.prune`` makes, once with
``funcprune.compat`` and once with torch, each on a fresh copy of the same model. The forward rows
time ``funcprune.functional_call`` against the unpruned model and torch's hooked module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace

import torch
import torch.nn.utils.prune as torch_prune

import funcprune as fp

from . import _models
from ._cases import Case, Side, holders

_BATCH = {"resnet18": 2, "mlp": 256, "lenet": 64}


def _pruned_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: model.get_submodule(name.rsplit(".", 1)[0]) for name in _models.prunable_names(model)}


def _module_side(base: torch.nn.Module, action: Callable[[dict[str, torch.nn.Module]], None]) -> Side:
    """A side that copies ``base`` (untimed) and runs ``action`` on its prunable modules (timed)."""

    def prepare():
        mods = _pruned_modules(copy.deepcopy(base))
        return lambda: (action(mods), mods)[1]

    return Side(prepare, lambda mods: {name: m.weight_mask for name, m in mods.items()})


def _per_layer(lib, fn: str, *args) -> Callable:
    return lambda mods: [getattr(lib, fn)(m, "weight", *args) for m in mods.values()]


def _global(lib, method: str, amount: float) -> Callable:
    return lambda mods: lib.global_unstructured(
        [(m, "weight") for m in mods.values()], pruning_method=getattr(lib, method), amount=amount
    )


def _iterative(lib, amount: float, rounds: int) -> Callable:
    def action(mods):
        for _ in range(rounds):
            for m in mods.values():
                lib.l1_unstructured(m, "weight", amount)

    return action


def compat_cases(compat, model: str = "resnet18", quick: bool = False) -> list[Case]:
    """``funcprune.compat`` vs ``torch.nn.utils.prune``: the same module-level calls (fewer if ``quick``)."""
    base = _models.build(model)
    rows = [
        ("l1_unstructured 0.3, per layer", lambda lib: _per_layer(lib, "l1_unstructured", 0.3), None),
        ("global_unstructured L1 0.8", lambda lib: _global(lib, "L1Unstructured", 0.8), None),
        ("iterative: 5 rounds of L1 0.2", lambda lib: _iterative(lib, 0.2, 5), None),
        ("ln_structured L2 0.3, dim 0", lambda lib: _per_layer(lib, "ln_structured", 0.3, 2, 0), None),
        ("random_unstructured 0.3", lambda lib: _per_layer(lib, "random_unstructured", 0.3), 0),
        ("random_structured 0.3, dim 0", lambda lib: _per_layer(lib, "random_structured", 0.3, 0), 0),
    ]
    cases = [
        Case(
            "compat: " + group,
            model,
            _module_side(base, make(compat)),
            _module_side(base, make(torch_prune)),
            1.0,
            seed=seed,
            ours_label="compat",
        )
        for group, make, seed in rows[: 1 if quick else None]
    ]
    if quick:
        return cases
    weights50 = _models.weights("resnet50")

    def holder_side(lib):
        def prepare():
            mods = holders(weights50)
            return lambda: (_global(lib, "L1Unstructured", 0.8)(mods), mods)[1]

        return Side(prepare, lambda mods: {name: m.weight_mask for name, m in mods.items()})

    cases.append(
        Case(
            "compat: global_unstructured L1 0.8",
            "resnet50",
            holder_side(compat),
            holder_side(torch_prune),
            1.0,
            ours_label="compat",
        )
    )
    return cases


def _pruned_pair(model: str, compat=None, ours_first: bool = True) -> SimpleNamespace:
    """Both sides of the forward rows, pruned by global L1 0.8 (same masks).

    funcprune's side: ``params``, bool ``masks``, ``float_masks``, ``masked`` (masks applied once),
    ``train`` (params that require grad) and the compat-pruned ``compat_model`` (None without
    compat). torch's side: the ``hooked`` module and an ``unpruned`` copy. ``base`` only lends its
    structure and buffers to ``funcprune.functional_call``. Where each side's tensors sit in memory
    alone moves these equal-work rows by about 1%, so ``ours_first`` picks which side is allocated
    first and the fresh-process runs alternate it.
    """
    base = _models.build(model)
    names = _models.prunable_names(base)
    got = SimpleNamespace(base=base, compat_model=None)

    def ours():
        got.params = {name: p.detach().clone() for name, p in base.named_parameters()}
        got.masks = fp.global_unstructured(got.params, 0.8, include=names)
        got.float_masks = {name: m.float() for name, m in got.masks.items()}
        got.masked = fp.apply_masks(got.params, got.masks)
        got.train = {name: p.clone().requires_grad_() for name, p in got.params.items()}
        if compat is not None:
            got.compat_model = copy.deepcopy(base)
            compat.global_unstructured(
                [(m, "weight") for m in _pruned_modules(got.compat_model).values()],
                pruning_method=compat.L1Unstructured,
                amount=0.8,
            )

    def theirs():
        got.hooked = copy.deepcopy(base)
        torch_prune.global_unstructured(
            [(m, "weight") for m in _pruned_modules(got.hooked).values()],
            pruning_method=torch_prune.L1Unstructured,
            amount=0.8,
        )
        got.unpruned = copy.deepcopy(base)

    for side in (ours, theirs) if ours_first else (theirs, ours):
        side()
    return got


def _outputs_check(ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], what: str):
    def run():
        a, b = ours(), theirs()
        if not torch.equal(a, b):
            raise AssertionError(f"{what}: outputs differ (max abs diff {(a - b).abs().max():.3g})")

    return run


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


def _step(forward: Callable[[], torch.Tensor], params) -> Callable[[], None]:
    def run():
        for p in params:
            p.grad = None
        forward().sum().backward()

    return run


def forward_cases(model: str, compat=None, ours_first: bool = True) -> list[Case]:
    """Masked inference and training steps: funcprune vs the unpruned model and torch's hooks.

    Every model stays in eval mode (batch norm reads its running stats), so a training step is a
    deterministic forward and backward whose outputs both sides must match bit for bit.
    """
    pair = _pruned_pair(model, compat, ours_first)
    base, params, masks, hooked, unpruned = pair.base, pair.params, pair.masks, pair.hooked, pair.unpruned
    compat_model = pair.compat_model
    x = _models.example_input(model, _BATCH[model])
    call = lambda p, m: lambda: fp.functional_call(base, p, (x,), masks=m)  # noqa: E731
    same_out = _outputs_check(_no_grad(call(pair.masked, None)), _no_grad(lambda: hooked(x)), f"{model} forward")
    timed = lambda fn: Side(lambda: fn, lambda _: {})  # noqa: E731
    cases = [
        Case(
            "inference, masks applied once",
            model,
            timed(_no_grad(call(pair.masked, None))),
            timed(_no_grad(lambda: unpruned(x))),
            1.03,
            theirs_label="unpruned",
        ),
        Case(
            "inference, bool masks every call",
            model,
            timed(_no_grad(call(params, masks))),
            timed(_no_grad(lambda: hooked(x))),
            1.0,
            theirs_label="torch hooks",
        ),
    ]
    train = pair.train
    hooked_params = [p for p in hooked.parameters() if p.requires_grad]
    for label, m in (("bool", masks), ("float", pair.float_masks)):
        cases.append(
            Case(
                f"training step, {label} masks every step",
                model,
                timed(_step(call(train, m), list(train.values()))),
                timed(_step(lambda: hooked(x), hooked_params)),
                1.0,
                theirs_label="torch hooks",
            )
        )
    for case in cases:
        case.check_fn = same_out
    # No target: what swapping in the same, unmasked values through torch.func costs (the floor of
    # any functional approach, funcprune's included), to read the first row against.
    floor = _no_grad(lambda: torch.func.functional_call(base, params, (x,)))
    cases.insert(
        1,
        Case(
            "inference, torch.func.functional_call, unmasked params (reference)",
            model,
            timed(floor),
            timed(_no_grad(lambda: unpruned(x))),
            None,
            ours_label="torch.func",
            theirs_label="unpruned",
            check_fn=_outputs_check(floor, _no_grad(lambda: unpruned(x)), f"{model} torch.func forward"),
        ),
    )
    if compat_model is not None:
        cases.append(
            Case(
                "compat: pruned module forward",
                model,
                timed(_no_grad(lambda: compat_model(x))),
                timed(_no_grad(lambda: hooked(x))),
                1.0,
                ours_label="compat",
                theirs_label="torch hooks",
                check_fn=_outputs_check(
                    _no_grad(lambda: compat_model(x)), _no_grad(lambda: hooked(x)), f"{model} compat forward"
                ),
            )
        )
    for case in cases:  # near-equal work on both sides: longer samples steady the ratio
        case.min_sample, case.rounds, case.count_faults = 0.25, 31, True
    return cases
