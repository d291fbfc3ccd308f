"""Tensor-level one-shot methods against the papers' reference procedures (tests/_oneshot_ref.py)."""

import math

import pytest
import torch
from _oneshot_ref import fasterprune, outlier_percent, owl_amounts, wanda_mask

import funcprune as fp
from funcprune.oneshot import outlier_ratio, owl, sparsegpt, wanda, wanda_scores


def _hessian(cols, tokens=None, dtype=torch.float64, seed=0, dead=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens or 2 * cols, cols, generator=g, dtype=dtype)
    x[:, list(dead)] = 0
    return x.T @ x


def _weight(rows, cols, dtype=torch.float64, seed=1):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Wanda


@pytest.mark.parametrize("amount", [0.5, 0.25, 0.75, 0.0, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wanda_masks_equal_the_reference_bit_for_bit_where_amount_times_inputs_is_whole(amount, dtype):
    w, norm = _weight(16, 64, dtype), _weight(1, 64, dtype, seed=2).abs().reshape(-1)
    keep = wanda(w, norm, amount)
    ref = ~wanda_mask(w.abs() * norm.reshape(1, -1), amount)
    assert torch.equal(keep, ref)


def test_wanda_rounds_per_row_where_the_reference_floors():
    w, norm = _weight(8, 10), _weight(1, 10, seed=2).abs().reshape(-1)
    keep = wanda(w, norm, 0.35)  # 3.5 -> round half to even = 4 pruned per row; the reference floors to 3
    assert torch.equal((~keep).sum(1), torch.full((8,), 4))
    assert torch.equal((~wanda_mask(w.abs() * norm, 0.35)).sum(1), torch.full((8,), 7))
    ref4 = ~wanda_mask(w.abs() * norm, 0.4)  # same 4 smallest per row
    assert torch.equal(keep, ref4)


def test_wanda_int_amount_is_a_count_per_row():
    w, norm = _weight(4, 12), torch.ones(12, dtype=torch.float64)
    assert torch.equal(wanda(w, norm, 3), ~wanda_mask(w.abs(), 3 / 12))


def test_wanda_ties_go_to_the_lower_index_as_the_stable_sort():
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 2.0]])
    assert torch.equal(wanda(w, torch.ones(6), 0.5), ~wanda_mask(w, 0.5))


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8), (1, 4)])
def test_wanda_nm_equals_the_reference_per_group(pattern):
    n, m = pattern
    w, norm = _weight(16, 64), _weight(1, 64, seed=2).abs().reshape(-1)
    keep = wanda(w, norm, None, pattern=pattern)
    assert torch.equal(keep, ~wanda_mask(w.abs() * norm, 0, m - n, m))
    assert bool(fp.patterns.satisfies_nm(keep, n, m).all())


def test_wanda_with_a_prior_mask_prunes_amount_of_each_rows_survivors():
    w, norm = _weight(6, 20), _weight(1, 20, seed=2).abs().reshape(-1)
    prior = torch.rand(6, 20, generator=torch.Generator().manual_seed(3)) > 0.3
    keep = wanda(w, norm, 0.5, mask=prior)
    assert not bool((keep & ~prior).any())
    alive = prior.sum(1)
    assert torch.equal(keep.sum(1), alive - torch.round(alive.double() * 0.5).long())
    # among the survivors of a row, the lowest scores went
    scores = wanda_scores(w, norm)
    for r in range(6):
        dropped, kept = scores[r][prior[r] & ~keep[r]], scores[r][keep[r]]
        assert dropped.numel() == 0 or kept.numel() == 0 or dropped.max() <= kept.min()


def test_wanda_nm_with_a_prior_mask_keeps_only_survivors():
    w, norm = _weight(4, 16), torch.ones(16, dtype=torch.float64)
    prior = torch.ones(4, 16, dtype=torch.bool)
    prior[:, 0] = False
    keep = wanda(w, norm, None, pattern=(2, 4), mask=prior)
    assert not bool(keep[:, 0].any()) and bool(fp.patterns.satisfies_nm(keep, 2, 4).all())


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(input_norm=torch.ones(5)), "input_norm must have shape \\(8,\\)"),
        (dict(input_norm=torch.full((8,), math.nan)), "input_norm must be finite"),
        (dict(amount=1.5), "amount=1.5"),
        (dict(amount=-1), "amount=-1"),
        (dict(pattern=(2, 3)), "divisible by 3"),
        (dict(pattern=(5, 4)), "kept_per_group"),
        (dict(mask=torch.ones(3, 3, dtype=torch.bool)), "mask has shape"),
    ],
)
def test_wanda_bad_input_raises_naming_the_argument(bad, match):
    args = dict(input_norm=torch.ones(8), amount=0.5, pattern=None, mask=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        wanda(torch.ones(4, 8), args["input_norm"], args["amount"], pattern=args["pattern"], mask=args["mask"])


def test_wanda_refuses_a_weight_with_nan():
    with pytest.raises(ValueError, match="weight holds NaN"):
        wanda(torch.tensor([[math.nan, 1.0]]), torch.ones(2), 0.5)


# ------------------------------------------------------------------------------------------------
# SparseGPT


@pytest.mark.parametrize("cols, block_size", [(64, 128), (96, 32), (100, 16)])
@pytest.mark.parametrize("amount", [0.5, 0.3])
def test_sparsegpt_equals_the_reference_bit_for_bit_in_float64(cols, block_size, amount):
    w, h = _weight(24, cols), _hessian(cols, dead=(3,))
    new, keep = sparsegpt(w, h, amount, block_size=block_size)
    ref_w, ref_pruned = fasterprune(w, h, amount, blocksize=block_size, exact=True)
    assert torch.equal(keep, ~ref_pruned)
    assert torch.equal(new, ref_w)
    assert not bool(new[~keep].any())  # pruned entries are exactly 0


def test_sparsegpt_prunes_exactly_the_rounded_count_per_block_where_the_reference_prunes_one_more():
    w, h = _weight(16, 64, dtype=torch.float32), _hessian(64, dtype=torch.float32)
    _, keep = sparsegpt(w, h, 0.5, block_size=32)
    _, ref_pruned = fasterprune(w, h, 0.5, blocksize=32, exact=False)
    for i1 in (0, 32):
        assert int((~keep[:, i1 : i1 + 32]).sum()) == 256
        assert int(ref_pruned[:, i1 : i1 + 32].sum()) == 257  # the `<=` of sorted[int(n * sparsity)]


def test_sparsegpt_block_ties_go_to_the_lower_row_major_index():
    w = torch.tensor([[1.0, 1.0, 2.0, 1.0], [1.0, 3.0, 1.0, 4.0]], dtype=torch.float64)
    _, keep = sparsegpt(w, torch.eye(4, dtype=torch.float64), 0.5, damp=0.0)
    # identity Hessian: scores w^2, no error pushed between columns; five 1.0 tie for four prunes
    assert torch.equal(keep, torch.tensor([[False, False, True, False], [False, True, True, True]]))


@pytest.mark.parametrize("pattern", [(2, 4), (4, 8)])
def test_sparsegpt_nm_equals_the_reference_from_the_updated_weights(pattern):
    n, m = pattern
    w, h = _weight(12, 64), _hessian(64, dead=(5,))
    new, keep = sparsegpt(w, h, None, pattern=pattern, block_size=32)
    ref_w, ref_pruned = fasterprune(w, h, 0, m - n, m, blocksize=32)
    assert torch.equal(keep, ~ref_pruned) and torch.equal(new, ref_w)
    assert bool(fp.patterns.satisfies_nm(keep, n, m).all())


def test_sparsegpt_float32_matches_the_float32_reference_and_float64_to_round_off():
    w32, h32 = _weight(32, 128, dtype=torch.float32), _hessian(128, dtype=torch.float32)
    new, keep = sparsegpt(w32, h32, 0.5)
    ref_w, ref_pruned = fasterprune(w32, h32, 0.5, exact=True)
    assert new.dtype == torch.float32
    assert torch.equal(keep, ~ref_pruned) and torch.equal(new, ref_w)
    new64, keep64 = sparsegpt(w32.double(), h32.double(), 0.5)
    torch.testing.assert_close(new.double(), new64, rtol=1e-4, atol=1e-5)


def test_sparsegpt_hessian_scale_does_not_change_the_result():
    w, h = _weight(8, 32), _hessian(32)
    new1, keep1 = sparsegpt(w, h, 0.5)
    new2, keep2 = sparsegpt(w, h * 4.0, 0.5)  # exact power of two: bit for bit
    assert torch.equal(keep1, keep2) and torch.equal(new1, new2)


def test_sparsegpt_returns_the_weights_dtype_and_leaves_inputs_alone():
    w, h = _weight(8, 32, dtype=torch.float32).to(torch.bfloat16), _hessian(32, dtype=torch.float32)
    w0, h0 = w.clone(), h.clone()
    new, keep = sparsegpt(w, h, 0.5)
    assert new.dtype == torch.bfloat16 and keep.dtype == torch.bool
    assert torch.equal(w, w0) and torch.equal(h, h0)


def test_sparsegpt_with_a_prior_mask_keeps_pruned_entries_pruned_and_prunes_among_survivors():
    w, h = _weight(8, 32), _hessian(32)
    prior = torch.rand(8, 32, generator=torch.Generator().manual_seed(4)) > 0.25
    new, keep = sparsegpt(w, h, 0.5, mask=prior, block_size=16)
    assert not bool((keep & ~prior).any()) and not bool(new[~keep].any())
    for i1 in (0, 16):
        alive = int(prior[:, i1 : i1 + 16].sum())
        assert int(keep[:, i1 : i1 + 16].sum()) == alive - round(0.5 * alive)


def test_sparsegpt_dead_inputs_are_zeroed():
    w, h = _weight(8, 16), _hessian(16, dead=(2, 7))
    new, _ = sparsegpt(w, h, 0.25)
    assert not bool(new[:, [2, 7]].any())


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (dict(hessian=torch.eye(7)), ValueError, "hessian must have shape \\(8, 8\\)"),
        (dict(hessian=torch.eye(8) + torch.triu(torch.ones(8, 8), 1)), ValueError, "not symmetric"),
        (dict(hessian=torch.full((8, 8), math.nan)), ValueError, "NaN or inf"),
        (dict(hessian=torch.eye(8, dtype=torch.float16)), TypeError, "float32 or float64"),
        (dict(amount=2), TypeError, "fraction"),
        (dict(amount=1.5), ValueError, "amount=1.5"),
        (dict(pattern=(2, 3)), ValueError, "divisible by 3"),
        (dict(pattern=(2, 8), block_size=4), ValueError, "block_size=4"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(damp=-1.0), ValueError, "damp"),
    ],
)
def test_sparsegpt_bad_input_raises_naming_the_argument(bad, exc, match):
    args = dict(hessian=torch.eye(8), amount=0.5, pattern=None, block_size=128, damp=0.01)
    args.update(bad)
    with pytest.raises(exc, match=match):
        sparsegpt(torch.ones(4, 8), args.pop("hessian"), args.pop("amount"), **args)


def test_sparsegpt_refuses_a_hessian_that_is_not_positive_definite():
    h = -torch.eye(8, dtype=torch.float64)
    h[0, 0] = 100.0
    with pytest.raises(ValueError, match="positive definite"):
        sparsegpt(torch.ones(4, 8), h, 0.5)


# ------------------------------------------------------------------------------------------------
# OWL


def test_outlier_ratio_is_the_reference_percent_over_100_with_one_common_mean():
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(16, 32, generator=g).abs() ** 3, torch.randn(8, 16, generator=g).abs() ** 4]
    # the reference divides in float32
    assert outlier_ratio(scores, 5.0) == pytest.approx(outlier_percent(scores, 5.0) / 100, rel=1e-6)
    one = torch.cat([s.reshape(-1) for s in scores])
    assert outlier_ratio(one, 5.0) == outlier_ratio(scores, 5.0)


def test_owl_amounts_equal_the_reference_formula():
    ratios = [0.011, 0.034, 0.02, 0.05, 0.007]
    got = owl(ratios, 0.7, lam=0.08)
    ref = owl_amounts([100 * r for r in ratios], 0.7, 0.08)  # percents: the scaling cancels
    assert got == pytest.approx(ref, abs=1e-12)
    assert sum(got) / len(got) == pytest.approx(0.7, abs=1e-12)
    assert max(got) - min(got) == pytest.approx(0.16, abs=1e-12)
    assert got[ratios.index(max(ratios))] == min(got)  # most outliers: pruned least


def test_owl_equal_ratios_give_the_amount_everywhere():
    assert owl([0.1, 0.1], 0.5) == [0.5, 0.5]


@pytest.mark.parametrize(
    "args, match",
    [
        (([], 0.5), "non-empty"),
        (([0.1, math.nan], 0.5), "finite"),
        (([0.1, 0.2], 1.5), "amount"),
        (([0.1, 0.2], 0.99, 0.08), "outside \\[0, 1\\]"),
    ],
)
def test_owl_bad_input_raises(args, match):
    with pytest.raises(ValueError, match=match):
        owl(*args[:2], lam=args[2] if len(args) > 2 else 0.08)


def test_the_oneshot_code_never_sorts():
    """Selection goes through the kernel: no topk/sort/argsort in funcprune/oneshot."""
    import pathlib

    import funcprune.oneshot as oneshot

    for path in pathlib.Path(oneshot.__file__).parent.glob("*.py"):
        text = path.read_text()
        for word in ("topk", "sort(", "argsort", "kthvalue"):
            assert word not in text, (path.name, word)


def test_ieee_matmul_turns_tf32_off_inside_and_restores_the_setting_even_on_error():
    from funcprune.oneshot.methods import ieee_matmul

    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    try:
        matmul.allow_tf32 = True
        with pytest.raises(RuntimeError, match="boom"), ieee_matmul():
            assert matmul.allow_tf32 is False
            raise RuntimeError("boom")
        assert matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = saved
