"""The selection primitives, against a stable-sort reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from funcprune import _select
from funcprune import select as kernel
from funcprune._radix import keep_from_cut, radix_cut, radix_select_keep
from funcprune.compat._ties import torch_order_select
from funcprune.select import select_flat as select
from funcprune.select import select_per_pool

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def reference_keep(keys, alive, k, largest):
    """Drop the k smallest (largest) alive keys; ties go to the lowest index (a stable sort)."""
    flat = torch.cat([key.reshape(-1).double() for key in keys])
    live = torch.cat(
        [(torch.ones_like(key, dtype=torch.bool) if a is None else a).reshape(-1) for key, a in zip(keys, alive)]
    )
    order = torch.sort(
        flat.masked_fill(~live, -torch.inf if largest else torch.inf), stable=True, descending=largest
    ).indices
    keep = live.clone()
    keep[order[:k]] = False
    return keep


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 40), min_size=1, max_size=4),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(1, 17),
    st.data(),
)
def test_radix_select_is_exact_across_leaves_and_chunks(dtype, sizes, with_alive, many_ties, largest, chunk, data):
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    keys = [torch.randn(size, generator=gen).abs() for size in sizes]
    if many_ties:
        keys = [(key * 3).round() for key in keys]
    keys = [key.to(dtype) for key in keys]
    alive = [torch.rand(size, generator=gen) > 0.4 if with_alive else None for size in sizes]
    n_alive = sum(key.numel() if a is None else int(a.sum()) for key, a in zip(keys, alive))
    k = data.draw(st.integers(0, n_alive))
    got = radix_select_keep(keys, alive, k, largest=largest, chunk=chunk)
    assert all(g.shape == key.shape and g.dtype == torch.bool for g, key in zip(got, keys))
    assert torch.equal(torch.cat([g.reshape(-1) for g in got]), reference_keep(keys, alive, k, largest))


def test_radix_select_key_fn_and_special_values():
    values = torch.tensor([0.0, -0.0, float("inf"), 3.0, -2.0, float("nan"), 1e-40, -1e-40])
    for k in range(values.numel() + 1):
        got = radix_select_keep([values], [None], k, key_fn=torch.abs, chunk=3)[0]
        ref = torch.ones(values.numel(), dtype=torch.bool)
        ref[torch.sort(values.abs(), stable=True).indices[:k]] = False  # NaN sorts last, as topk treats it
        assert torch.equal(got, ref), k


def test_radix_select_counts_exactly_with_tiny_chunks_on_a_larger_tensor():
    # Same selection logic as a > 2**31-entry model, at a size CI can hold: many chunks, int64 counts.
    keys = [torch.rand(50_001).half(), torch.rand(30_000).half()]  # fp16: heavy ties
    k = 61_234
    got = radix_select_keep(keys, [None, None], k, chunk=997)
    assert sum(int((~g).sum()) for g in got) == k
    assert torch.equal(torch.cat([g.reshape(-1) for g in got]), reference_keep(keys, [None, None], k, False))


@pytest.mark.parametrize("largest", [False, True])
def test_select_static_and_tensor_counts_agree(largest):
    gen = torch.Generator().manual_seed(0)
    key = torch.randn(50, generator=gen)
    alive = torch.rand(50, generator=gen) > 0.3
    for k in range(int(alive.sum()) + 1):
        static = select(key, k, largest=largest, alive=alive)
        dynamic = select(key, torch.tensor(k), largest=largest, alive=alive, k_max=k + 3)
        assert torch.equal(static, dynamic) and int(static.sum()) == k and not (static & ~alive).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
@pytest.mark.parametrize("largest", [False, True])
def test_select_eager_fast_path_picks_topks_set(dtype, largest):
    # sizes above the threshold-path cut-off, with exact ties, zeros, inf and NaN among the keys
    from funcprune.select import FAST_MIN as _FAST_MIN

    gen = torch.Generator().manual_seed(1)
    n = 3 * _FAST_MIN + 7
    key = torch.randn(n, generator=gen).abs().to(dtype)
    key[:100] = 0.0
    key[100:200] = key[300]
    key[200], key[201] = float("inf"), float("nan")
    for k in (1, 150, n // 3, n // 2, n - 150, n - 1):
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.topk(key, k, largest=largest).indices] = True
        got = select(key, k, largest=largest)
        assert int(got.sum()) == k
        if not torch.equal(got, ref):  # only a tie straddling the cut may be chosen differently
            assert key[got ^ ref].double().unique().numel() == 1


# ------------------------------------------------------------------------------------------------
# Survivors are tracked with a mask, never a sentinel value: NaN and inf survivors are pruned like torch.

INF, NAN = float("inf"), float("nan")


def topk_order(values):
    """Sortable float64 keys in torch.topk's order: NaN above +inf (all NaN equal), -0.0 equal to 0.0."""
    v = values.double().reshape(-1)
    return torch.where(v.isnan(), torch.tensor(2.0), torch.where(v.isinf() & (v > 0), 1.0, 0.0)), v.nan_to_num(0.0)


def assert_best_selected(chosen, key, alive, k, largest):
    """``k`` alive entries chosen, and none ranks worse than an alive entry left out."""
    alive = torch.ones_like(chosen) if alive is None else alive
    assert int(chosen.sum()) == k and not (chosen & ~alive).any()
    cls, val = topk_order(key)
    pairs = list(zip(cls.tolist(), val.tolist()))
    picked = [pairs[i] for i in chosen.nonzero().flatten().tolist()]
    left = [pairs[i] for i in (alive & ~chosen).nonzero().flatten().tolist()]
    if picked and left:
        assert (min(picked) >= max(left)) if largest else (max(picked) <= min(left))


def test_nan_and_inf_among_the_weights_are_both_pruned_like_torch():
    import torch.nn.utils.prune as torch_prune

    import funcprune as fp

    w = torch.tensor([NAN, INF, 1.0, 2.0])
    lin = torch.nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w.view(1, 4))
    torch_prune.l1_unstructured(lin, "weight", 2)
    first = fp.l1_unstructured(w, 2)
    assert first.tolist() == lin.weight_mask.bool().flatten().tolist() == [True, True, False, False]
    torch_prune.l1_unstructured(lin, "weight", 2)  # a PruningContainer: torch's survivor rule
    second = fp.l1_unstructured(w, 2, mask=first)
    assert second.tolist() == lin.weight_mask.bool().flatten().tolist() == [False] * 4
    assert fp.l1_unstructured(w, 1, mask=first).tolist() == [True, False, False, False]  # NaN ranks above inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_forty_thousand_entries_full_of_infs_and_nans_prune_exactly_like_torch(dtype):
    import torch.nn.utils.prune as torch_prune

    import funcprune as fp

    g = torch.Generator().manual_seed(11)
    n = 40_000
    w = torch.randn(n, generator=g)
    pick = torch.rand(n, generator=g)
    w[pick < 0.25] = INF
    w[(pick >= 0.25) & (pick < 0.4)] = -INF
    w[(pick >= 0.4) & (pick < 0.55)] = NAN
    w = w.to(dtype)
    prior = torch.rand(n, generator=g) > 0.1
    alive = int(prior.sum())
    for amount in (0.875, 0.5, 1234, alive):
        new = fp.l1_unstructured(w, amount, mask=prior)
        k = amount if isinstance(amount, int) else round(amount * alive)
        assert_best_selected(prior & ~new, w.abs(), prior, k, largest=False)
        container = torch_prune.PruningContainer()
        container._tensor_name = "w"
        method = torch_prune.L1Unstructured(amount)
        method._tensor_name = "w"
        container.add_pruning_method(method)
        ref = container.compute_mask(w, prior.to(dtype)).bool()
        assert int(ref.sum()) == int(new.sum())
        differ = ref ^ new
        if differ.any():  # only entries tied at the cut (all NaN, or all of one value) may be chosen differently
            tied = w.abs()[differ].double()
            assert tied.isnan().all() or tied.unique().numel() == 1


@pytest.mark.parametrize("largest", [False, True])
def test_select_with_survivors_holding_the_fillers_value(largest):
    # eager fast path (>= _FAST_MIN entries), small topk path, tensor-k path, vmap and meta
    from funcprune.select import FAST_MIN as _FAST_MIN

    g = torch.Generator().manual_seed(2)
    for n in (64, 3 * _FAST_MIN):
        key = torch.randn(n, generator=g).abs()
        key[torch.rand(n, generator=g) < 0.3] = -INF if largest else INF
        key[torch.rand(n, generator=g) < 0.1] = NAN
        alive = torch.rand(n, generator=g) > 0.5
        n_alive = int(alive.sum())
        for k in (1, n_alive // 3, n_alive - 1, n_alive):
            assert_best_selected(select(key, k, largest=largest, alive=alive), key, alive, k, largest)
            assert_best_selected(select(key, torch.tensor(k), largest=largest, alive=alive), key, alive, k, largest)
        ks = torch.tensor([0, 1, n_alive // 2, n_alive])
        batched = torch.vmap(lambda kk: select(key, kk, largest=largest, alive=alive))(ks)
        assert batched.sum(1).tolist() == ks.tolist() and not (batched & ~alive).any()
    meta = select(key.to("meta"), 3, largest=largest, alive=alive.to("meta"))
    assert meta.device.type == "meta" and meta.shape == key.shape


def test_every_method_prunes_exactly_the_requested_survivors_whatever_they_hold():
    import funcprune as fp

    g = torch.Generator().manual_seed(5)
    specials = torch.tensor([NAN, INF, -INF, 0.0, -0.0, 1.0])
    w = specials[torch.randint(0, 6, (12, 10), generator=g)]
    prior = torch.rand(12, 10, generator=g) > 0.3
    alive = int(prior.sum())
    for amount in (0.5, 7):
        k = amount if isinstance(amount, int) else round(amount * alive)
        for fn in (
            lambda: fp.l1_unstructured(w, amount, mask=prior),
            lambda: fp.random_unstructured(w, amount, mask=prior, generator=torch.Generator().manual_seed(0)),
        ):
            assert int((prior & ~fn()).sum()) == k
        batched = torch.vmap(lambda m: fp.l1_unstructured(w, amount, mask=m))(torch.stack([prior, prior]))
        assert ((prior & ~batched).sum((1, 2)) == k).all()
    channels = prior.any(1)
    for amount in (0.5, 3):
        k = amount if isinstance(amount, int) else round(amount * int(channels.sum()))
        new = fp.ln_structured(w, amount, 2, 0, mask=prior)  # NaN and inf norms among the channels
        assert int((channels & ~new.any(1)).sum()) == k
        new = fp.patterns.block_structured(w, amount, (2, 2), mask=prior)
        blocks = prior.view(6, 2, 5, 2).any(3).any(1)
        assert int((blocks & ~new.view(6, 2, 5, 2).any(3).any(1)).sum()) == (
            amount if isinstance(amount, int) else round(amount * int(blocks.sum()))
        )


def test_ordered_keys_rank_like_topk():
    from funcprune._select import _ordered

    values = torch.tensor([NAN, -NAN, INF, -INF, 0.0, -0.0, 1e-45, -1e-45, 3.0, -3.0, 1e38, -1e38])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        v = values.to(dtype)
        ordered = _ordered(v)
        info = torch.iinfo(ordered.dtype)
        assert ordered.min() > info.min and ordered.max() < info.max  # the extremes stay free for the dead
        for i in range(v.numel()):
            for j in range(v.numel()):
                a, b = v[i], v[j]
                a_key = (bool(a.isnan()), float(a) if not a.isnan() else 0.0)
                b_key = (bool(b.isnan()), float(b) if not b.isnan() else 0.0)
                assert (a_key < b_key) == bool(ordered[i] < ordered[j]), (dtype, float(a), float(b))
    # the eager shortcut for keys without a sign bit (magnitudes): NaNs of any payload tie, above +inf
    bits = torch.tensor([0x7F800000, 0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0, 1, 0x3F800000], dtype=torch.int32)
    v = bits.view(torch.float32)  # inf, three NaN payloads, 0, the smallest subnormal, 1
    ordered, batched = _ordered(v), torch.vmap(_ordered)(v.view(1, -1))[0]  # vmap: the general path
    for o in (ordered, batched):
        assert o[1] == o[2] == o[3] > o[0] > o[6] > o[5] > o[4]
        assert o.min() > torch.iinfo(o.dtype).min and o.max() < torch.iinfo(o.dtype).max
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dtype)
        v = torch.tensor([info.min, info.max, 0, 1], dtype=dtype)
        ordered = _ordered(v)
        assert ordered.min() > torch.iinfo(ordered.dtype).min and ordered.max() < torch.iinfo(ordered.dtype).max


# ------------------------------------------------------------------------------------------------
# Pools: ties to the lower index (N:M groups, per-row pruning).


def stable_per_row(key, k, largest, alive=None):
    """Reference: per row, the k best alive keys, ties to the lower index; NaN ranks above inf."""
    out = torch.zeros(key.shape, dtype=torch.bool)
    ks = [k] * key.shape[0] if isinstance(k, int) else list(k)
    sign = -1 if largest else 1
    for r in range(key.shape[0]):
        row = key[r].double()
        cand = [i for i in range(key.shape[1]) if alive is None or alive[r, i]]
        cand.sort(key=lambda i: (sign * int(row[i].isnan()), sign * float(row[i].nan_to_num(0.0)), i))
        out[r, cand[: ks[r]]] = True
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int32, torch.int64]),
    st.integers(1, 5),
    st.integers(1, 9),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_select_per_pool_matches_a_stable_reference(dtype, pools, units, largest, masked, data):
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    key = torch.randint(-2, 3, (pools, units), generator=g).to(dtype)  # ties everywhere
    if dtype.is_floating_point:
        key[torch.rand(pools, units, generator=g) < 0.15] = NAN
        key[torch.rand(pools, units, generator=g) < 0.15] = -INF if largest else INF
    alive = torch.rand(pools, units, generator=g) > 0.3 if masked else None
    k = data.draw(st.integers(0, units))
    live = torch.ones(pools, units, dtype=torch.bool) if alive is None else alive
    got = select_per_pool(key, k, largest=largest, alive=alive)
    assert torch.equal(got & live, stable_per_row(key, k, largest, alive))  # a pool short of k: all its survivors
    assert (got.sum(1) == k).all()
    per_row = torch.minimum(torch.full((pools,), k), live.sum(1))
    assert torch.equal(
        select_per_pool(key, per_row, largest=largest, alive=alive, k_max=units),
        stable_per_row(key, per_row.tolist(), largest, alive),
    )


def test_rows_granularity_prunes_a_fraction_of_every_rows_survivors():

    g = torch.Generator().manual_seed(4)
    w = torch.randn(6, 10, generator=g)
    scores = w.abs() * torch.rand(10, generator=g)  # e.g. Wanda: |W| times an input-norm per column
    new = kernel.prune_units(w, kernel.rows(w.shape, 0), 0.3, scores)
    assert ((~new).sum(1) == 3).all()
    assert torch.equal(new, ~stable_per_row(scores, 3, largest=False))
    prior = torch.rand(6, 10, generator=g) > 0.4
    new = kernel.prune_units(w, kernel.rows(w.shape, 0), 0.5, scores, mask=prior)
    alive = prior.sum(1)
    expected = torch.round(alive.double() * 0.5).long()  # round half to even, per row
    assert torch.equal((prior & ~new).sum(1), expected) and not (new & ~prior).any()
    assert torch.equal(new, prior & ~stable_per_row(scores, expected.tolist(), largest=False, alive=prior))
    # rows along dim 1 of a 3-D tensor, int amounts, vmap, meta, ties
    t = torch.randn(4, 5, 6, generator=g)
    by_dim1 = kernel.prune_units(t, kernel.rows(t.shape, 1), 2, t.abs())
    assert ((~by_dim1).sum((0, 2)) == 2).all()
    with pytest.raises(ValueError, match="amount=9 should be smaller"):
        kernel.prune_units(w, kernel.rows(w.shape, 0), 9, scores, mask=prior)
    batched = torch.vmap(lambda m: kernel.prune_units(w, kernel.rows(w.shape, 0), 0.5, scores, mask=m))(
        torch.stack([prior, ~prior])
    )
    assert torch.equal(batched[0], new)
    meta = kernel.prune_units(w.to("meta"), kernel.rows(w.shape, 0), 0.5, scores.to("meta"), mask=prior.to("meta"))
    assert meta.device.type == "meta" and meta.shape == w.shape
    ones = torch.ones(2, 8)
    assert kernel.prune_units(ones, kernel.rows(ones.shape, 0), 0.25, ones).tolist() == [[False] * 2 + [True] * 6] * 2


def test_granularity_errors():

    with pytest.raises(TypeError, match="dim must be an int"):
        kernel.rows((3, 4), 0.5)
    with pytest.raises(IndexError, match="Invalid index 2"):
        kernel.rows((3, 4), 2)
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        kernel.groups((4, 8), 3, -1)
    with pytest.raises(ValueError, match="multidimensional"):
        kernel.slices((5,), 0)
    with pytest.raises(ValueError, match="does not tile"):
        kernel.blocks((4, 4), (3, 2))
    with pytest.raises(ValueError, match="unit scores have shape"):
        kernel.prune_units(torch.ones(3, 4), kernel.rows((3, 4), 0), 0.5, torch.ones(4, 3))


def test_ranking_ops_appear_only_in_the_kernel_and_compats_tie_module():
    """One selection kernel: every other module ranks through funcprune.select (its primitives in
    _select.py; calls, not prose); torch's own tie order, for the drop-in, lives in compat/_ties.py."""
    import pathlib
    import re

    import funcprune

    root = pathlib.Path(funcprune.__file__).parent
    allowed = {root / "select.py", root / "_select.py", root / "compat" / "_ties.py"}
    ranking = re.compile(r"topk\(|kthvalue\(|argsort\(|\.sort\(")
    offenders = [
        f"{path.relative_to(root)}:{i}"
        for path in root.rglob("*.py")
        if path not in allowed
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if ranking.search(line)
    ]
    assert offenders == []
    assert all(ranking.search(path.read_text()) for path in allowed - {root / "select.py"})  # where ranking is


def test_radix_cut_reports_the_tie_band_and_keep_from_cut_breaks_it_by_index():
    torch.manual_seed(0)
    for levels in (3, 50, 10**6):
        keys = [torch.randint(0, levels, (n,)).float() for n in (1000, 37, 2500)]
        alive = [None, torch.rand(37) > 0.3, torch.rand(2500) > 0.5]
        flat = torch.cat([key if a is None else key[a] for key, a in zip(keys, alive)]).sort().values
        for k in (1, 17, 1500, flat.numel()):
            cut = radix_cut(keys, alive, k, chunk=256)
            got = keep_from_cut(keys, alive, cut, chunk=256)
            want = reference_keep(keys, alive, k, largest=False).split([key.numel() for key in keys])
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert cut.straddles == bool((flat[k:] == flat[k - 1]).any())


def test_torch_order_select_is_torchs_topk_on_the_survivors():
    torch.manual_seed(0)
    for n in (10, 5000, 40000):
        key = torch.randint(0, 7, (n,)).float()
        key[torch.rand(n) < 0.05] = float("nan")
        alive = torch.rand(n) > 0.4
        for k in (1, n // 100 + 1, int(alive.sum()) // 2):
            for largest in (False, True):
                want = torch.zeros(n, dtype=torch.bool)
                want[alive.nonzero().view(-1)[torch.topk(key[alive], k, largest=largest).indices]] = True
                assert torch.equal(torch_order_select(key, k, largest=largest, alive=alive), want)


# The eager fast path of ``select`` must give topk's positions.
KINDS = ["normal", "abs", "ties", "nan", "half", "inf"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("largest", [False, True])
def test_threshold_fast_path_gives_topks_positions(kind, largest):
    gen = torch.Generator().manual_seed(2 * KINDS.index(kind) + largest)
    n = kernel.FAST_MIN * 3 + 7
    key = torch.randn(n, generator=gen)
    if kind == "abs":
        key = key.abs()
    elif kind == "ties":
        key = (key * 4).round()
    elif kind == "nan":
        key[torch.randint(0, n, (40,), generator=gen)] = float("nan")
    elif kind == "half":
        key = key.half()
    elif kind == "inf":
        key[:50] = float("inf")
    for k in (1, 17, n // 3, n // 2, n - 30, n - 1):
        got = kernel.select_flat(key, k, largest=largest)
        ref = torch.zeros(n, dtype=torch.bool)
        ref[torch.topk(key, k, largest=largest).indices] = True
        assert torch.equal(got, ref), (kind, k)
        fast = _select._select_by_threshold(key, k, largest)
        if kind in ("normal", "abs") and 0.01 < k / n < 0.99:
            assert fast is not None  # continuous keys take the fast path
        assert fast is None or torch.equal(fast, ref)


def test_threshold_fast_path_with_survivors_matches_torch():
    import torch.nn.utils.prune as torch_prune

    import funcprune as fp

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(300, 200, generator=gen)
    mask = fp.l1_unstructured(w, 0.4)
    for amount in (0.3, 1234):
        ref = _torch_container_mask(torch_prune, w, mask, amount)
        assert torch.equal(fp.l1_unstructured(w, amount, mask=mask), ref)


def _torch_container_mask(torch_prune, w, mask, amount):
    container = torch_prune.PruningContainer()
    container._tensor_name = "w"
    method = torch_prune.L1Unstructured(amount)
    method._tensor_name = "w"
    container.add_pruning_method(method)
    return container.compute_mask(w, mask.float()).bool()


def test_radix_selection_ties_nans_of_every_payload_by_index():
    # NaNs with different payloads are one value to topk; the radix keys must tie them too, so the
    # documented rule (ties at the cut go by lowest global index) holds among NaNs as well.
    nans = torch.tensor([0x7FC00001, 0x7FC00000, 0x7FC00005, 0x7F800001], dtype=torch.int32).view(torch.float32)
    keys = [torch.cat([torch.randn(3000, generator=torch.Generator().manual_seed(0)), nans.repeat(500)]), nans]
    for k in (1, 3000, 3001, 4000, 5003):
        got = radix_select_keep(keys, [None, None], k, key_fn=torch.abs, chunk=777)
        want = reference_keep(
            [torch.where(key.isnan(), torch.inf, key.abs()) for key in keys], [None, None], k, largest=False
        ).split([key.numel() for key in keys])
        # the reference maps NaN to +inf, which ranks them together above every finite key; no inf in keys
        assert all(torch.equal(a, b) for a, b in zip(got, want)), k


def test_cached_granularities_still_validate_every_call():
    from funcprune.select import entries, slices

    assert slices(torch.Size([3, 4]), 1) is slices((3, 4), -1) and entries([2, 3]) is entries((2, 3))
    for dim in (True, 1.0):  # equal to 1 as a cache key, but not an int dim
        with pytest.raises(TypeError, match="dim must be an int"):
            slices((3, 4), dim)
    with pytest.raises(IndexError):
        slices((3, 4), 2)
