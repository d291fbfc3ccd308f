"""Uniform and ERK distributions, exact rounding to counts, and per-leaf pruning with prune_by."""

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprune as fp
from funcprune.distributions import erk, prune_by, to_counts, uniform

shapes = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=4).map(tuple), min_size=1, max_size=6)


def make_params(shape_list):
    return {f"l{i}.weight": torch.empty(s, device="meta") for i, s in enumerate(shape_list)}


def kept(params, sparsities):
    return sum((1 - s) * params[n].numel() for n, s in sparsities.items())


@settings(max_examples=60, deadline=None)
@given(shape_list=shapes, sparsity=st.floats(0, 1), kernel=st.booleans(), power=st.sampled_from([0.5, 1.0, 2.0]))
def test_erk_meets_target_with_densities_at_most_one(shape_list, sparsity, kernel, power):
    params = make_params(shape_list)
    out = erk(params, sparsity, include=lambda n, p: True, kernel=kernel, power=power)
    total = sum(p.numel() for p in params.values())
    assert math.isclose(kept(params, out), (1 - sparsity) * total, rel_tol=1e-9, abs_tol=1e-6)
    assert all(0.0 <= s <= 1.0 for s in out.values())

    # Free (not dense) leaves keep densities proportional to their raw ERK score; dense ones score higher.
    def raw(shape):
        if kernel or len(shape) < 2:
            return (sum(shape) / math.prod(shape)) ** power
        return ((shape[0] + shape[1]) / (shape[0] * shape[1])) ** power

    # (densities within float rounding of 0 carry no ratio: 1 - s cancels catastrophically there)
    free = {n: (1 - s) / raw(tuple(params[n].shape)) for n, s in out.items() if s > 0 and 1 - s > 1e-9}
    if free:
        ratio = next(iter(free.values()))
        assert all(math.isclose(r, ratio, rel_tol=1e-9) for r in free.values())
        dense = [raw(tuple(params[n].shape)) for n, s in out.items() if s == 0]
        assert all(d >= max(raw(tuple(params[n].shape)) for n in free) * (1 - 1e-12) for d in dense)


def test_erk_worked_example_and_power_zero_is_uniform():
    params = {"a": torch.zeros(10, 10), "b": torch.zeros(100, 100)}
    out = erk(params, 0.5)
    # raw a = 0.2, raw b = 0.02; eps * (0.2 * 100 + 0.02 * 10000) = 5050 kept -> eps = 22.95 -> a dense.
    assert out["a"] == 0.0 and math.isclose(out["b"], 1 - (5050 - 100) / 10000)
    assert erk(params, 0.7, power=0.0) == {"a": pytest.approx(0.7), "b": pytest.approx(0.7)}


def test_empty_leaves_and_to_counts_errors():
    params = {"empty": torch.zeros(0, 4), "w": torch.zeros(4, 4)}
    assert erk(params, 0.5) == {"empty": 0.0, "w": pytest.approx(0.5)}
    assert erk({"empty": torch.zeros(0, 4)}, 0.5) == {"empty": 0.0}
    with pytest.raises(ValueError, match="sparsity of w"):
        to_counts(params, {"w": 1.5})
    with pytest.raises(KeyError):
        to_counts(params, {"nope": 0.5})


def test_include_exclude_overrides_default_covers_weights():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    params = dict(model.named_parameters())
    assert set(erk(params, 0.8)) == {"0.weight", "3.weight"}
    assert set(erk(params, 0.8, exclude=["0.weight"])) == {"3.weight"}
    out = erk(params, 0.8, overrides={"0.weight": 0.1, "3.bias": 0.0})
    assert out["0.weight"] == 0.1 and out["3.bias"] == 0.0
    covered = ["0.weight", "3.weight", "3.bias"]
    total = sum(params[n].numel() for n in covered)
    assert math.isclose(kept(params, out), 0.2 * total)
    assert set(uniform(params, 0.3)) == {"0.weight", "3.weight"}
    assert uniform(params, 0.3) == {"0.weight": pytest.approx(0.3), "3.weight": pytest.approx(0.3)}


@pytest.mark.parametrize("fn", [uniform, erk])
def test_errors(fn):
    params = {"a": torch.zeros(4, 4), "b": torch.zeros(2, 2)}
    for bad in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="sparsity"):
            fn(params, bad)
    with pytest.raises(ValueError, match="override for a"):
        fn(params, 0.5, overrides={"a": 2.0})
    with pytest.raises(KeyError):
        fn(params, 0.5, overrides={"nope": 0.5})
    with pytest.raises(KeyError):
        fn(params, 0.5, include=["nope"])
    with pytest.raises(ValueError, match="covers no leaf"):
        fn(params, 0.5, exclude=["a", "b"])
    # Would need density > 1 for "b": a is pinned fully pruned but the target wants 10% pruned.
    with pytest.raises(ValueError, match="cannot be met"):
        fn(params, 0.1, overrides={"a": 1.0})
    with pytest.raises(ValueError, match="cannot be met"):
        fn(params, 0.95, overrides={"a": 0.0})


@settings(max_examples=60, deadline=None)
@given(shape_list=shapes, sparsity=st.floats(0, 1))
def test_to_counts_is_exact(shape_list, sparsity):
    params = make_params(shape_list)
    sparsities = erk(params, sparsity, include=lambda n, p: True)
    counts = to_counts(params, sparsities)
    exact = {n: s * params[n].numel() for n, s in sparsities.items()}
    assert sum(counts.values()) == round(sum(exact.values()))
    assert all(math.floor(exact[n]) <= c <= math.floor(exact[n]) + 1 for n, c in counts.items())


def test_prune_by_equals_per_leaf_prune_and_is_pure(device):
    torch.manual_seed(0)
    params = {
        "a": torch.randn(6, 5, device=device),
        "b": torch.randn(4, 4, device=device),
        "c": torch.randn(3, device=device),
    }
    snapshot = {k: v.clone() for k, v in params.items()}
    amounts = {"a": 0.3, "b": 5}
    out = prune_by(params, fp.l1_unstructured, amounts)
    assert set(out) == {"a", "b"}
    for name, amount in amounts.items():
        assert torch.equal(out[name], fp.l1_unstructured(params[name], amount))
    structured = prune_by(params, fp.ln_structured, {"a": 0.5}, 2, 0, masks=out)
    assert torch.equal(structured["a"], fp.ln_structured(params["a"], 0.5, 2, 0, mask=out["a"]))
    assert torch.equal(structured["b"], out["b"])
    assert all(torch.equal(params[k], snapshot[k]) for k in params)


def test_prune_by_target_lands_exactly_every_step():
    torch.manual_seed(1)
    params = {"a": torch.randn(37, 11), "b": torch.randn(23, 7)}
    masks = None
    for step_target in (0.1, 0.33, 0.5, 0.61, 0.9):
        amounts = erk(params, step_target)
        masks = prune_by(params, fp.l1_unstructured, amounts, masks=masks, target=True)
        for name, s in amounts.items():
            assert int((~masks[name]).sum()) == round(s * params[name].numel())  # ERK is monotone in s
    counts = to_counts(params, erk(params, 0.95))
    masks = prune_by(params, fp.l1_unstructured, counts, masks=masks, target=True)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.95 * (37 * 11 + 23 * 7))


def test_prune_by_target_under_vmap_and_meta():
    w = torch.randn(8, 8)
    start = torch.stack([fp.l1_unstructured(w, k) for k in (0, 10, 40)])
    m = torch.vmap(
        lambda mask: prune_by({"w": w}, fp.l1_unstructured, {"w": 0.5}, masks={"w": mask}, target=True)["w"]
    )(start)
    assert [int((~x).sum()) for x in m] == [32, 32, 40]
    meta = prune_by(
        {"w": torch.empty(8, 8, device="meta")},
        fp.l1_unstructured,
        {"w": 0.5},
        masks={"w": torch.ones(8, 8, dtype=torch.bool, device="meta")},
        target=True,
    )
    assert meta["w"].device.type == "meta"


def test_prune_by_errors_name_the_leaf():
    params = {"a": torch.randn(4), "b": torch.randn(4)}
    with pytest.raises(ValueError, match="b"):
        prune_by(params, fp.l1_unstructured, {"a": 1, "b": 9})
    with pytest.raises(ValueError, match="b"):
        prune_by(params, fp.l1_unstructured, {"b": 1.5}, target=True)
    with pytest.raises(KeyError):
        prune_by(params, fp.l1_unstructured, {"z": 0.5})
