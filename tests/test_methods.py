"""Tensor-level mask functions, differentially against torch.nn.utils.prune."""

import math

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from _torch_ref import outcome, torch_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import funcprune as fp

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
NORMS = [1, 2, 3, math.inf, -math.inf, "fro"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw, min_dims=1):
    """A random scores tensor, dtype, optional prior mask and an amount (valid or not)."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=min_dims, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(shape, generator=gen).to(dtype)
    prior = (torch.rand(shape, generator=gen) > draw(st.sampled_from([0.2, 0.5, 0.9]))) if draw(st.booleans()) else None
    size = math.prod(shape)
    amount = draw(st.one_of(st.integers(0, size + 1), st.floats(0, 1), st.sampled_from([0.5, 0.25, 1.0, 0.0])))
    return scores, prior, amount


def assert_same_selection(got, ref, key, prior, *, largest_pruned=False):
    """Bitwise equality, or (where tied keys make torch's choice arbitrary) the same tie-consistent count."""
    assert got.dtype == torch.bool and got.shape == ref.shape
    if torch.equal(got, ref):
        return
    alive = torch.ones_like(got) if prior is None else prior
    assert int(got.sum()) == int(ref.sum()), "different number pruned"
    assert not (got & ~alive).any(), "a pruned entry came back"
    kept, pruned = key[got & alive].double(), key[alive & ~got].double()
    if kept.numel() and pruned.numel():
        # only ties at the threshold may be chosen differently
        if largest_pruned:
            assert pruned.min() >= kept.max()
        else:
            assert pruned.max() <= kept.min()
    assert (key[got ^ ref].double().unique().numel()) <= 1, "differences beyond a single tied value"


@pytest.mark.slow  # a long property test
@SETTINGS
@given(cases())
def test_l1_unstructured_matches_torch(case):
    scores, prior, amount = case
    ref, ref_err = outcome(lambda: torch_mask(torch_prune.L1Unstructured(amount), scores, prior))
    got, err = outcome(lambda: fp.l1_unstructured(scores, amount, mask=prior))
    assert err == ref_err
    if ref is not None:
        assert_same_selection(got, ref, scores.abs(), prior)


@pytest.mark.slow  # a long property test
@SETTINGS
@given(cases(min_dims=2), st.sampled_from(NORMS), st.data())
def test_ln_structured_matches_torch(case, n, data):
    scores, prior, amount = case
    dim = data.draw(st.integers(-scores.dim(), scores.dim() - 1))
    if isinstance(amount, int):
        amount = min(amount, scores.shape[dim] + 1)
    ref, ref_err = outcome(lambda: torch_mask(torch_prune.LnStructured(amount, n, dim), scores, prior))
    got, err = outcome(lambda: fp.ln_structured(scores, amount, n, dim, mask=prior))
    assert err == ref_err
    if ref is not None:
        norm = torch_prune._compute_norm(scores, n, dim)  # the running torch's channel norms
        others = [d for d in range(scores.dim()) if d != dim % scores.dim()]
        channels = lambda m: m.any(dim=others)  # noqa: E731 - kept channels: any entry kept
        alive = torch.ones_like(got) if prior is None else prior
        view = [1] * scores.dim()
        view[dim] = -1
        assert torch.equal(got, channels(got).view(view).expand(scores.shape) & alive), "not whole channels"
        # Tied norms make torch's choice of channels arbitrary: compare channels, not entries (a tied
        # channel with fewer survivors may go instead of one with more).
        assert_same_selection(channels(got), channels(ref), norm, None if prior is None else channels(prior))


@pytest.mark.parametrize("n", NORMS + ["nuc"])
@pytest.mark.parametrize("shape, dim", [((4, 3, 3, 3), 0), ((6, 5), 0), ((6, 5), -1), ((2, 3, 4), 1), ((3, 4), 1)])
def test_channel_norms_and_their_errors_follow_the_running_torch(n, shape, dim):
    # funcprune succeeds or fails as the running torch does ('fro' over a conv weight's 3 dims works on 2.14)
    scores = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    norm, _ = outcome(lambda: torch_prune._compute_norm(scores, n, dim))
    ref, ref_err = outcome(lambda: torch_mask(torch_prune.LnStructured(0.5, n, dim), scores))
    got, err = outcome(lambda: fp.ln_structured(scores, 0.5, n, dim))
    if norm is not None and norm.shape != (shape[dim],):
        # torch 2.14 reads 'nuc' over other than 2 dims as a matrix of norms and prunes by it
        assert n == "nuc" and err is ValueError
        return
    assert err == ref_err
    if ref is not None:
        assert torch.equal(got, ref)


@pytest.mark.parametrize("n", NORMS)
def test_compat_ln_structured_on_a_conv_weight_is_torchs_on_this_torch(n):
    # compat.ln_structured(Conv2d(3, 4, 3), "weight", 0.5, n="fro", dim=0) gives torch's mask
    import funcprune.compat as compat

    ours, theirs = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
    theirs.load_state_dict(ours.state_dict())
    ref, ref_err = outcome(lambda: torch_prune.ln_structured(theirs, "weight", 0.5, n=n, dim=0).weight_mask)
    got, err = outcome(lambda: compat.ln_structured(ours, "weight", 0.5, n=n, dim=0).weight_mask)
    assert err == ref_err
    if ref is not None:
        assert torch.equal(got, ref)


@pytest.mark.parametrize("n", NORMS + ["nuc"])
def test_channel_norm_fallback_is_torch_2_14s_rule(n):
    from funcprune import _norms

    for shape, dim in (((4, 3, 3, 3), 0), ((6, 5), 1), ((2, 3, 4), -1)):
        t = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        fallback, err = outcome(lambda: _norms._channel_norm_2_14(t, n, dim))
        if isinstance(n, str) and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 14):
            continue  # torch 2.13 reads 'fro' and 'nuc' through the deprecated torch.norm
        ref, ref_err = outcome(lambda: torch_prune._compute_norm(t, n, dim))
        assert err == ref_err and (ref is None or torch.equal(fallback, ref))


@pytest.mark.slow  # a long property test
@SETTINGS
@given(cases(), st.integers(0, 2**31 - 1))
def test_random_unstructured_fresh_mask_same_draws_as_torch(case, seed):
    scores, _, amount = case
    torch.manual_seed(seed)
    ref, ref_err = outcome(lambda: torch_mask(torch_prune.RandomUnstructured(amount), scores))
    torch.manual_seed(seed)
    got, err = outcome(lambda: fp.random_unstructured(scores, amount))
    assert err == ref_err
    if ref is not None:
        assert torch.equal(got, ref)
        assert torch.equal(
            torch.rand(3),
            (torch.manual_seed(seed), torch_mask(torch_prune.RandomUnstructured(amount), scores), torch.rand(3))[2],
        ), "RNG stream advanced differently"


@pytest.mark.slow  # a long property test
@SETTINGS
@given(cases(min_dims=2), st.integers(0, 2**31 - 1), st.data())
def test_random_structured_fresh_mask_same_draws_as_torch(case, seed, data):
    scores, _, amount = case
    dim = data.draw(st.integers(-scores.dim(), scores.dim() - 1))
    if isinstance(amount, int):
        amount = min(amount, scores.shape[dim] + 1)
    torch.manual_seed(seed)
    ref, ref_err = outcome(lambda: torch_mask(torch_prune.RandomStructured(amount, dim), scores))
    torch.manual_seed(seed)
    got, err = outcome(lambda: fp.random_structured(scores, amount, dim))
    assert err == ref_err
    if ref is not None:
        assert torch.equal(got, ref)


@SETTINGS
@given(cases(), st.integers(0, 2**31 - 1))
def test_random_unstructured_on_prior_mask_prunes_exact_count_of_survivors(case, seed):
    scores, prior, amount = case
    alive = scores.numel() if prior is None else int(prior.sum())
    expected, err = outcome(lambda: torch_prune._compute_nparams_toprune(amount, alive))
    if isinstance(amount, int) and amount > alive:
        with pytest.raises(ValueError, match="amount"):
            fp.random_unstructured(scores, amount, mask=prior)
        return
    gen = torch.Generator().manual_seed(seed)
    got = fp.random_unstructured(scores, amount, mask=prior, generator=gen)
    again = fp.random_unstructured(scores, amount, mask=prior, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(got, again)
    assert alive - int(got.sum()) == expected
    if prior is not None:
        assert not (got & ~prior).any()


def test_custom_from_mask_and_identity_match_torch():
    scores = torch.randn(4, 5)
    custom = (torch.rand(4, 5) > 0.5).float()
    prior = torch.rand(4, 5) > 0.3
    for p in (None, prior):
        ref = torch_mask(torch_prune.CustomFromMask(custom), scores, p)
        assert torch.equal(fp.custom_from_mask(scores, custom, mask=p), ref)
        assert torch.equal(fp.identity(scores, mask=p), torch_mask(torch_prune.Identity(), scores, p))


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_method_returns_a_new_bool_mask_on_the_scores_device(device, dtype):
    scores = torch.randn(6, 4, device=device).to(dtype)
    prior = torch.rand(6, 4, device=device) > 0.3
    before_scores, before_prior = scores.clone(), prior.clone()
    gen = torch.Generator(device=device).manual_seed(0)
    masks = [
        fp.identity(scores, mask=prior),
        fp.l1_unstructured(scores, 0.4, mask=prior),
        fp.random_unstructured(scores, 3, mask=prior, generator=gen),
        fp.random_structured(scores, 0.5, 1, mask=prior, generator=gen),
        fp.ln_structured(scores, 1, 2, 0, mask=prior),
        fp.custom_from_mask(scores, prior.float(), mask=prior),
    ]
    for mask in masks:
        assert mask.dtype == torch.bool and mask.shape == scores.shape and mask.device == scores.device
        assert not (mask & ~prior).any(), "the old mask must stay pruned"
        assert mask.data_ptr() != prior.data_ptr()
    assert torch.equal(scores, before_scores) and torch.equal(prior, before_prior)


def test_every_method_runs_on_meta():
    scores = torch.empty(6, 4, device="meta")
    prior = torch.empty(6, 4, device="meta", dtype=torch.bool)
    for fn in (
        lambda m: fp.identity(scores, mask=m),
        lambda m: fp.l1_unstructured(scores, 0.4, mask=m),
        lambda m: fp.random_unstructured(scores, 0.4, mask=m),
        lambda m: fp.random_structured(scores, 2, 0, mask=m),
        lambda m: fp.ln_structured(scores, 0.5, 1, -1, mask=m),
        lambda m: fp.custom_from_mask(scores, prior, mask=m),
        lambda m: fp.l1_unstructured(scores, torch.tensor(0.3, device="meta"), mask=m),
    ):
        for mask in (None, prior):
            out = fn(mask)
            assert out.device.type == "meta" and out.dtype == torch.bool and out.shape == scores.shape


def _vmap_vs_loop(fn, *stacked, randomness="error"):
    batched = torch.func.vmap(fn, randomness=randomness)(*stacked)
    looped = torch.stack([fn(*(x[i] for x in stacked)) for i in range(stacked[0].shape[0])])
    return batched, looped


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 1.0, 2])
def test_vmap_over_masks_each_element_prunes_its_own_survivors(amount):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 7, generator=gen)
    masks = torch.rand(8, 5, 7, generator=gen) > torch.linspace(0.05, 0.9, 8).view(8, 1, 1)
    for fn in (
        lambda m: fp.l1_unstructured(scores, amount, mask=m),
        lambda m: fp.ln_structured(scores, amount, 2, 0, mask=m),
        lambda m: fp.ln_structured(scores, amount, 1, -1, mask=m),
        lambda m: fp.identity(scores, mask=m),
    ):
        batched = torch.func.vmap(fn)(masks)
        for mask, out in zip(masks, batched):
            expected, err = outcome(lambda: fn(mask))
            if err is None:
                assert torch.equal(out, expected)
            else:  # too few survivors for an int amount: documented to prune every survivor under vmap
                assert err is ValueError and not out.any()


def test_vmap_over_amounts_is_a_sparsity_sweep():
    scores = torch.randn(40)
    prior = torch.rand(40) > 0.25
    amounts = torch.linspace(0, 1, 11, dtype=torch.float64)
    batched, _ = _vmap_vs_loop(lambda a: fp.l1_unstructured(scores, a, mask=prior), amounts)
    for a, mask in zip(amounts.tolist(), batched):
        assert torch.equal(mask, fp.l1_unstructured(scores, a, mask=prior))
    counts = torch.arange(0, 6)
    batched, looped = _vmap_vs_loop(lambda k: fp.ln_structured(scores.view(8, 5), k, 2, 0), counts)
    assert torch.equal(batched, looped)


def test_vmap_over_stacked_scores_and_masks():
    scores = torch.randn(6, 4, 3)
    masks = torch.rand(6, 4, 3) > 0.4
    batched, looped = _vmap_vs_loop(lambda s, m: fp.l1_unstructured(s, 0.5, mask=m), scores, masks)
    assert torch.equal(batched, looped)


def test_int_amount_beyond_survivors_under_vmap_prunes_every_survivor():
    scores = torch.randn(10)
    masks = torch.stack([torch.arange(10) < 3, torch.arange(10) < 8])
    out = torch.func.vmap(lambda m: fp.l1_unstructured(scores, 5, mask=m))(masks)
    assert out[0].sum() == 0 and out[1].sum() == 3


@pytest.mark.parametrize("method", ["unstructured", "structured"])
def test_random_methods_under_vmap_draw_per_element_and_keep_counts(method):
    scores = torch.randn(6, 5)
    masks = torch.ones(16, 6, 5, dtype=torch.bool)
    if method == "unstructured":
        out = torch.func.vmap(lambda m: fp.random_unstructured(scores, 0.4, mask=m), randomness="different")(masks)
        assert (out.sum((1, 2)) == 18).all()
    else:
        out = torch.func.vmap(lambda m: fp.random_structured(scores, 2, 0, mask=m), randomness="different")(masks)
        assert (out.all(2).sum(1) == 4).all()
    assert len({tuple(m.flatten().tolist()) for m in out}) > 1, "every element drew the same mask"
    same = torch.func.vmap(lambda m: fp.random_unstructured(scores, 0.4, mask=m), randomness="same")(masks)
    assert all(torch.equal(same[0], m) for m in same)


@pytest.mark.parametrize(
    "bad, err",
    [
        ("0.3", TypeError),
        (None, TypeError),
        (-1, ValueError),
        (1.5, ValueError),
        (-0.1, ValueError),
        (torch.ones(2), ValueError),
        (torch.tensor(True), TypeError),
    ],
)
def test_bad_amounts_raise_like_torch(bad, err):
    scores = torch.randn(3, 4)
    with pytest.raises(err, match="amount"):
        fp.l1_unstructured(scores, bad)
    with pytest.raises(err, match="amount"):
        fp.ln_structured(scores, bad, 2, 0)
    if not isinstance(bad, torch.Tensor):
        with pytest.raises(err):
            torch_prune.L1Unstructured(bad)


def test_bool_amount_is_rejected_up_front():
    # torch validates True as an int, then fails inside topk with a TypeError; funcprune says so at once
    scores = torch.randn(5)
    with pytest.raises(TypeError):
        torch_mask(torch_prune.L1Unstructured(True), scores)
    with pytest.raises(TypeError, match="amount"):
        fp.l1_unstructured(scores, True)


def test_structural_errors():
    with pytest.raises(ValueError, match="multidimensional"):
        fp.ln_structured(torch.randn(5), 1, 2, 0)
    with pytest.raises(ValueError, match="multidimensional"):
        fp.random_structured(torch.randn(5), 1, 0)
    for dim in (2, -3, 7):
        with pytest.raises(IndexError, match=f"Invalid index {dim}"):
            fp.ln_structured(torch.randn(3, 4), 1, 2, dim)
    with pytest.raises(ValueError, match=r"amount=5 should be smaller than the number of parameters to prune=4"):
        fp.ln_structured(torch.randn(3, 4), 5, 2, 1)
    with pytest.raises(ValueError, match=r"prune=2"):
        fp.l1_unstructured(torch.randn(3), 3, mask=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match=r"mask has shape \(4, 3\) but the scores have shape \(3, 4\)"):
        fp.l1_unstructured(torch.randn(3, 4), 0.5, mask=torch.ones(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"custom has shape \(2,\)"):
        fp.custom_from_mask(torch.randn(3), torch.ones(2))
    with pytest.raises(TypeError, match="mask must be a tensor"):
        fp.identity(torch.randn(3), mask=[1, 0, 1])


def test_float_and_int_masks_are_accepted_as_keep_where_nonzero():
    scores = torch.randn(4, 4)
    prior = torch.rand(4, 4) > 0.5
    for as_other in (prior.float(), prior.to(torch.int8), prior.double()):
        assert torch.equal(fp.l1_unstructured(scores, 0.5, mask=as_other), fp.l1_unstructured(scores, 0.5, mask=prior))


def test_amount_rounding_is_pythons_round_half_to_even():
    # 0.5 * 5 = 2.5 rounds to 2, 0.5 * 7 = 3.5 rounds to 4, as torch's _compute_nparams_toprune does
    for size in (5, 7, 9, 11):
        mask = fp.l1_unstructured(torch.randn(size), 0.5)
        assert size - int(mask.sum()) == torch_prune._compute_nparams_toprune(0.5, size) == round(0.5 * size)


def test_scores_that_require_grad_give_masks_that_gate_the_gradient():
    w = torch.randn(4, 4, requires_grad=True)
    (w * fp.l1_unstructured(w, 0.5)).sum().backward()
    assert torch.equal(w.grad, fp.l1_unstructured(w, 0.5).float())


@pytest.mark.parametrize(
    "call",
    [
        lambda s, m: fp.random_unstructured(s, 11),  # fails: more than there is
        lambda s, m: fp.random_unstructured(s, 0, mask=m),  # prunes nothing on top of a mask
        lambda s, m: fp.random_unstructured(s, 0.01, mask=m),  # rounds to nothing
        lambda s, m: fp.random_structured(s.view(2, 5), 0, 0, mask=m.view(2, 5)),
        lambda s, m: fp.global_unstructured({"a": s}, 0, masks={"a": m}, method="random"),
    ],
)
def test_random_methods_draw_nothing_when_failing_or_pruning_nothing(call):
    scores, prior = torch.zeros(10), torch.arange(10) < 7
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    try:
        call(scores, prior)
    except ValueError:
        pass
    assert torch.equal(torch.rand(3), expected), "the global RNG moved"


def test_method_modules_never_ask_whether_a_tensor_is_sharded():
    """DTensor is a backend, not a branch: method code holds no DTensor test and no sharded path of its own."""
    import pathlib
    import re

    root = pathlib.Path(fp.__file__).parent
    for name in ("methods", "patterns", "distributions", "stacking", "dst", "saliency"):
        text = (root / f"{name}.py").read_text()
        found = re.findall(r"\bis_dtensor\b|\b_dtensor\b|\b_sharded\.|\bcheck_dtensor_method\(", text)
        assert not found, f"{name}.py: {found}"


def test_dtensor_methods_allowlist_is_deprecated_and_kept():
    with pytest.warns(DeprecationWarning, match="DTENSOR_METHODS"):
        allow = fp.methods.DTENSOR_METHODS
    assert fp.l1_unstructured in allow and fp.ln_structured in allow
    with pytest.warns(DeprecationWarning, match="check_dtensor_method"):
        fp.methods.check_dtensor_method(fp.patterns.nm_structured, torch.ones(2, 4))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = fp.methods.no_such_name


def test_hash_stream_scores_through_the_kernel_equal_the_random_methods():
    w = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    prior = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)) > 0.3
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    for gran, method, args in (
        (fp.select.entries(w.shape), fp.random_unstructured, ()),
        (fp.select.slices(w.shape, 1), fp.random_structured, (1,)),
    ):
        want = method(w, 3, *args, mask=prior, stream="hash", generator=gen())
        got = fp.select.prune_units(w, gran, 3, fp.select.HashStream(gen()), mask=prior)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="hash stream"):
        fp.select.prune_units(w, fp.select.rows(w.shape), 3, fp.select.HashStream(gen()))
