"""Schedules as pure functions of the step, and cumulative targets turned into per-round amounts."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import funcprune as fp
from funcprune.schedules import (
    amount_between,
    constant,
    cosine_decay,
    is_update_step,
    one_shot,
    periodic,
    polynomial,
    round_amounts,
)


def zhu_gupta(t, final, initial, begin, end, every, power=3):
    """The paper's formula, evaluated at the last update step (t0 + k * dt) not after t."""
    if t < begin:
        return initial
    if t >= end:
        return final
    k = (t - begin) // every
    return final + (initial - final) * (1 - k * every / (end - begin)) ** power


@pytest.mark.parametrize(
    "final,initial,begin,end,every", [(0.9, 0.0, 0, 100, 10), (0.5, 0.1, 20, 95, 7), (0.8, 0.0, 5, 6, 1)]
)
def test_polynomial_follows_zhu_gupta(final, initial, begin, end, every):
    s = polynomial(final, begin, end, every, initial)
    values = [s(t) for t in range(0, 130)]
    expected = [zhu_gupta(t, final, initial, begin, end, every) for t in range(0, 130)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert s(begin) == pytest.approx(initial) and s(end) == final and s(10**6) == final


def test_schedules_accept_tensor_steps_and_vmap():
    steps = torch.arange(0, 120)
    for s in (
        polynomial(0.9, 10, 100, 5),
        periodic(0.2, 10, 10, 5),
        one_shot(0.5, 30),
        cosine_decay(0.3, 50),
        constant(0.4),
    ):
        as_ints = torch.tensor([float(s(int(t))) for t in steps], dtype=torch.float64)
        assert torch.allclose(torch.stack([torch.as_tensor(s(t), dtype=torch.float64) for t in steps]), as_ints)
        assert torch.allclose(torch.vmap(s)(steps).to(torch.float64), as_ints)


def test_one_shot_periodic_cosine_and_update_steps():
    assert [one_shot(0.7, 3)(t) for t in range(5)] == [0.0, 0.0, 0.0, 0.7, 0.7]
    s = periodic(0.2, begin=0, every=10, rounds=5)
    assert [s(t) for t in (0, 9, 10, 40, 1000)] == pytest.approx([0.2, 0.2, 0.36, 1 - 0.8**5, 1 - 0.8**5])
    f = cosine_decay(0.3, 100, final=0.1)
    assert f(0) == pytest.approx(0.3) and f(100) == pytest.approx(0.1) and f(50) == pytest.approx(0.2)
    assert [t for t in range(30) if is_update_step(t, 5, 20, 5)] == [5, 10, 15, 20]
    assert polynomial(0.6, 7, 7)(6) == 0.0 and polynomial(0.6, 7, 7)(7) == 0.6  # begin == end: one-shot


@pytest.mark.parametrize(
    "make",
    [
        lambda: polynomial(0.5, 10, 5),  # start > end
        lambda: polynomial(0.5, 0, 10, every=0),
        lambda: polynomial(1.5, 0, 10),
        lambda: polynomial(0.5, 0, 10, power=0),
        lambda: polynomial(0.5, -1, 10),
        lambda: periodic(0.2, 0, 0, 3),
        lambda: periodic(1.2, 0, 1, 3),
        lambda: one_shot(-0.1),
        lambda: cosine_decay(0.3, 0),
        lambda: is_update_step(3, 5, 4),
        lambda: round_amounts([0.5, 0.4]),
        lambda: amount_between(0.6, 1.5),
        lambda: constant(2.0),
    ],
)
def test_bad_schedules_raise(make):
    with pytest.raises(ValueError):
        make()


def test_round_amounts_reach_the_target_in_five_rounds():
    torch.manual_seed(0)
    w = torch.randn(40, 25)
    targets = [polynomial(0.8, 0, 5)(t) for t in range(1, 6)]
    mask = None
    for target, amount in zip(targets, round_amounts(targets)):
        mask = fp.l1_unstructured(w, amount, mask=mask)
        assert int((~mask).sum()) == round(target * w.numel())
    assert int((~mask).sum()) == 800


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 500), targets=st.lists(st.floats(0, 1), min_size=1, max_size=6), seed=st.integers(0, 99))
def test_amount_between_measured_sparsity_is_exact(n, targets, seed):
    targets = sorted(targets)
    assume(all(abs(t * n - math.floor(t * n) - 0.5) > 1e-6 for t in targets))  # no exact .5 ties
    w = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(n, dtype=torch.bool)
    for target in targets:
        current = float(fp.sparsity({"w": mask}).fraction)
        mask = fp.l1_unstructured(w, amount_between(current, target), mask=mask)
        assert int((~mask).sum()) == max(round(target * n), n - int(mask.sum()))


def test_amount_between_tensor_and_global():
    assert float(amount_between(torch.tensor(0.5), torch.tensor(0.75))) == 0.5
    assert float(amount_between(torch.tensor(1.0), 1.0)) == 0.0
    assert amount_between(0.6, 0.5) == 0.0 and float(amount_between(torch.tensor(0.6), 0.5)) == 0.0
    params = {"a": torch.randn(30, 7), "b": torch.randn(50)}
    masks = None
    for target in (0.2, 0.45, 0.7):
        current = 0.0 if masks is None else float(fp.sparsity(masks, params).fraction)
        masks = fp.global_unstructured(params, amount_between(current, target), masks=masks)
        assert int(fp.sparsity(masks, params).pruned) == round(target * 260)


# --- a gradual-pruning loop ends at exactly `final`, whatever `every` is -----------------------------------


def test_end_is_always_an_update_step():
    steps = [t for t in range(100) if is_update_step(t, 5, 65, 7)]
    assert steps == [5, 12, 19, 26, 33, 40, 47, 54, 61, 65]
    assert polynomial(0.95, begin=5, end=65, every=7)(steps[-1]) == 0.95
    assert [t for t in range(10) if is_update_step(t, 3, 3, 4)] == [3]
    assert [t for t in range(30) if is_update_step(t, 5, 20, 5)] == [5, 10, 15, 20]  # on the grid: unchanged
    steps = torch.arange(0, 100)
    assert steps[is_update_step(steps, 5, 65, 7)].tolist() == [5, 12, 19, 26, 33, 40, 47, 54, 61, 65]


def gradual_loop(w, schedule, begin, end, every, measure):
    """The README's loop: at each update step prune to schedule(step) from the measured sparsity."""
    mask, updates = torch.ones_like(w, dtype=torch.bool), []
    for step in range(end + 20):
        if is_update_step(step, begin, end, every):
            updates.append(step)
            target = schedule(step)
            mask = fp.l1_unstructured(w, amount_between(measure(mask), target, total=w.numel()), mask=mask)
            assert int((~mask).sum()) == round(target * w.numel())  # every round lands on its target
    return mask, updates


@pytest.mark.parametrize(
    "begin,end,every",
    [(5, 65, 7), (0, 10, 3), (0, 10, 20), (3, 4, 2), (7, 7, 5), (1, 100, 9), (0, 97, 1), (10, 50, 13), (2, 33, 31)],
)
@pytest.mark.parametrize("final", [0.95, 0.5, 0.8, 0.9])
def test_gradual_pruning_loop_ends_at_exactly_final(begin, end, every, final):
    n = 997
    w = torch.randn(n, generator=torch.Generator().manual_seed(begin * 1000 + end + every))
    schedule = polynomial(final, begin, end, every)
    for measure in (lambda m: fp.sparsity({"w": m}), lambda m: float(fp.sparsity({"w": m}).fraction)):
        mask, updates = gradual_loop(w, schedule, begin, end, every, measure)
        assert updates[-1] == end and int((~mask).sum()) == round(final * n)
        assert updates == sorted(set(range(begin, end + 1, every)) | {end})


@settings(max_examples=60, deadline=None)
@given(
    begin=st.integers(0, 30),
    span=st.integers(0, 80),
    every=st.integers(1, 40),
    n=st.integers(1, 400),
    final=st.floats(0, 1),
    initial=st.floats(0, 1),
)
def test_gradual_pruning_loop_ends_at_final_for_any_window(begin, span, every, n, final, initial):
    initial = min(initial, final)
    w = torch.randn(n, generator=torch.Generator().manual_seed(n))
    schedule = polynomial(final, begin, begin + span, every, initial)
    mask, updates = gradual_loop(w, schedule, begin, begin + span, every, lambda m: fp.sparsity({"w": m}))
    assert updates[-1] == begin + span and int((~mask).sum()) == fp._amount.prune_count(final, n)


# --- amount_between with counts meets round(target * n) exactly, half-integers included -------------------

TARGETS = (0.0, 1 / 3, 0.5, 0.75, 0.95, 1.0)


def test_amount_between_is_exact_for_every_count_up_to_300():
    prune_count = fp._amount.prune_count
    for n in range(0, 301):
        targets = TARGETS + tuple((k + 0.5) / n for k in (n // 3, n - 1) if n)  # half-integer goals too
        for target in targets:
            goal = prune_count(target, n)
            for pruned in range(n + 1):
                amount = amount_between(pruned / n if n else 0.0, target, total=n)
                assert 0.0 <= amount <= 1.0
                assert pruned + prune_count(amount, n - pruned) == max(goal, pruned), (n, pruned, target)


def test_amount_between_from_332_of_997_pruned_to_half_prunes_exactly_round_half_n():
    n, w = 997, torch.randn(997, generator=torch.Generator().manual_seed(0))
    mask = fp.l1_unstructured(w, 332)
    assert amount_between(332 / 997, 0.5, total=n) * 665 == 166.0
    for current in (fp.sparsity({"w": mask}), float(fp.sparsity({"w": mask}).fraction)):
        out = fp.l1_unstructured(w, amount_between(current, 0.5, total=n), mask=mask)
        assert int((~out).sum()) == 498 == round(0.5 * n)
    with pytest.raises(ValueError, match="total"):
        amount_between(fp.sparsity({"w": mask}), 0.5, total=5)
    with pytest.raises(ValueError, match="total"):
        amount_between(0.5, 0.5, total=-1)


def test_amount_between_counts_as_tensors_and_under_vmap():
    n, targets = 297, torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0], dtype=torch.float64)
    for pruned in (0, 1, 2, 74, 148, 296, 297):
        expected = torch.tensor([amount_between(pruned / n, float(t), total=n) for t in targets], dtype=torch.float64)
        as_tensor = torch.stack([amount_between(torch.tensor(pruned / n), t, total=n) for t in targets])
        batched = torch.vmap(lambda t: amount_between(torch.tensor(pruned / n), t, total=n))(targets)
        assert torch.equal(as_tensor, expected) and torch.equal(batched, expected)
        goal = fp._amount.prune_count(targets, n)
        assert torch.equal(
            pruned + fp._amount.prune_count(batched, torch.tensor(n - pruned)),
            torch.maximum(goal, torch.tensor(pruned)),
        )


def test_round_amounts_with_total_is_exact():
    n = 997
    targets = sorted([polynomial(0.95, 0, 10, 3)(t) for t in (0, 3, 6, 9, 10)] + [0.25, 0.5, 0.75])  # 498.5
    w = torch.randn(n, generator=torch.Generator().manual_seed(1))
    mask = None
    for target, amount in zip(targets, round_amounts(targets, total=n)):
        mask = fp.l1_unstructured(w, amount, mask=mask)
        assert int((~mask).sum()) == round(target * n)


@pytest.mark.parametrize("begin,end,every", [(5, 65, 7), (0, 10, 4), (2, 3, 5)])
def test_global_gradual_loop_from_the_module_docstring(begin, end, every):
    gen = torch.Generator().manual_seed(every)
    params = {"a": torch.randn(31, 7, generator=gen), "b": torch.randn(50, generator=gen)}  # 267 entries
    schedule, masks = polynomial(0.95, begin, end, every), None
    for step in range(end + 5):
        if is_update_step(step, begin, end, every):
            amount = amount_between(fp.sparsity(masks, params), schedule(step))
            masks = fp.global_unstructured(params, amount, masks=masks)
            assert int(fp.sparsity(masks, params).pruned) == round(schedule(step) * 267)
    assert int(fp.sparsity(masks, params).pruned) == round(0.95 * 267) == 254
