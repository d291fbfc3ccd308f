"""The selection primitives, against a stable-sort reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from funcprune._select import radix_select_keep, select

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def reference_keep(keys, alive, k, largest):
    """Drop the k smallest (largest) alive keys; ties go to the lowest index (a stable sort)."""
    flat = torch.cat([key.reshape(-1).double() for key in keys])
    live = torch.cat([(torch.ones_like(key, dtype=torch.bool) if a is None else a).reshape(-1)
                      for key, a in zip(keys, alive)])
    order = torch.sort(flat.masked_fill(~live, -torch.inf if largest else torch.inf), stable=True,
                       descending=largest).indices
    keep = live.clone()
    keep[order[:k]] = False
    return keep


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(DTYPES), st.lists(st.integers(0, 40), min_size=1, max_size=4), st.booleans(),
       st.booleans(), st.booleans(), st.integers(1, 17), st.data())
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
    from funcprune._select import _FAST_MIN

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
