"""Schedules as pure functions of the step, and cumulative targets turned into per-round amounts."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import funcprune as fp
from funcprune.schedules import (amount_between, constant, cosine_decay, is_update_step, one_shot, periodic,
                                 polynomial, round_amounts)


def zhu_gupta(t, final, initial, begin, end, every, power=3):
    """The paper's formula, evaluated at the last update step (t0 + k * dt) not after t."""
    if t < begin:
        return initial
    if t >= end:
        return final
    k = (t - begin) // every
    return final + (initial - final) * (1 - k * every / (end - begin)) ** power


@pytest.mark.parametrize("final,initial,begin,end,every", [(0.9, 0.0, 0, 100, 10), (0.5, 0.1, 20, 95, 7),
                                                           (0.8, 0.0, 5, 6, 1)])
def test_polynomial_follows_zhu_gupta(final, initial, begin, end, every):
    s = polynomial(final, begin, end, every, initial)
    values = [s(t) for t in range(0, 130)]
    expected = [zhu_gupta(t, final, initial, begin, end, every) for t in range(0, 130)]
    assert values == pytest.approx(expected, abs=1e-12)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert s(begin) == pytest.approx(initial) and s(end) == final and s(10**6) == final


def test_schedules_accept_tensor_steps_and_vmap():
    steps = torch.arange(0, 120)
    for s in (polynomial(0.9, 10, 100, 5), periodic(0.2, 10, 10, 5), one_shot(0.5, 30), cosine_decay(0.3, 50),
              constant(0.4)):
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


@pytest.mark.parametrize("make", [
    lambda: polynomial(0.5, 10, 5),          # start > end
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
])
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
        masks = fp.global_unstructured(params, amount_between(current, target), masks)
        assert int(fp.sparsity(masks, params).pruned) == round(target * 260)
