"""Single-process tests of the radix selection's distributed features (global indices, reduce hooks), the hash stream.

Integer keys, ties broken by a radix selection over global indices, ``reduce``/``counted``
(the hooks a sharded selection uses), and that ``reduce=None`` keeps the one-process answer.
"""

import math

import pytest
import torch

import funcprune as fp
from funcprune import _hashstream, _radix


def _reference_keep(keys, alive, k, order=None):
    """Drop the k smallest alive keys; ties by ``order`` (default: position): a plain Python reference."""
    flat = [float(v) for key in keys for v in key.reshape(-1).tolist()]
    live = [True] * len(flat) if alive is None else [bool(v) for a in alive for v in a.reshape(-1).tolist()]
    order = list(range(len(flat))) if order is None else order
    ranked = sorted(
        (i for i in range(len(flat)) if live[i]),
        key=lambda i: (math.inf if math.isnan(flat[i]) else flat[i], math.isnan(flat[i]), order[i]),
    )
    dropped = set(ranked[:k])
    out = [live[i] and i not in dropped for i in range(len(flat))]
    masks, start = [], 0
    for key in keys:
        masks.append(torch.tensor(out[start : start + key.numel()], dtype=torch.bool).view(key.shape))
        start += key.numel()
    return masks


def _positions(keys):
    bases = [0]
    for key in keys[:-1]:
        bases.append(bases[-1] + key.numel())
    return lambda leaf, start, count: torch.arange(start, start + count, dtype=torch.int64) + bases[leaf]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_integer_keys_select_exactly_with_index_ties(dtype):
    g = torch.Generator().manual_seed(0)
    keys = [torch.randint(0, 4, (5, 7), generator=g).to(dtype), torch.randint(0, 4, (11,), generator=g).to(dtype)]
    alive = [torch.rand(5, 7, generator=g) > 0.2, None]
    n_alive = int(alive[0].sum()) + 11
    for k in (0, 1, 5, n_alive // 2, n_alive):
        want = _reference_keep(keys, [alive[0], torch.ones(11, dtype=torch.bool)], k)
        for index_fn in (None, _positions(keys)):
            got = _radix.radix_select_keep(keys, alive, k, chunk=4, index_fn=index_fn)
            assert all(torch.equal(a, b) for a, b in zip(got, want)), (k, index_fn)


def test_index_ties_equal_the_sequential_ties_on_floats_nan_included():
    g = torch.Generator().manual_seed(1)
    keys = [torch.randint(0, 3, (6, 6), generator=g).float(), torch.randint(0, 3, (9,), generator=g).float()]
    keys[0][0, :3] = float("nan")
    keys[1][2] = float("nan")
    keys[1][4] = float("inf")
    alive = [None, torch.rand(9, generator=g) > 0.3]
    key_fn = lambda piece: piece.abs()  # noqa: E731
    for k in (1, 7, 20, 30, 36 + int(alive[1].sum())):
        for largest in (False, True):
            cut = _radix.radix_cut(keys, alive, k, key_fn=key_fn, largest=largest, chunk=5)
            seq = _radix.keep_from_cut(keys, alive, cut, key_fn=key_fn, largest=largest, chunk=5)
            for total in (None, 45):  # the index bound: 16 index bits instead of 64
                by_index = _radix.keep_from_cut(
                    keys,
                    alive,
                    cut,
                    key_fn=key_fn,
                    largest=largest,
                    chunk=5,
                    index_fn=_positions(keys),
                    index_total=total,
                )
                assert all(torch.equal(a, b) for a, b in zip(seq, by_index)), (k, largest, total)


def test_index_ties_past_16_bits_of_index_follow_the_global_order():
    """Ties broken by lowest global index when the indices need two 16-bit passes (index_total > 2**16)."""
    n = 70_000
    order = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    keys = [torch.ones(n)]
    keys[0][order[:5]] = 2.0  # 5 entries above the tie, at scattered positions
    index_fn = lambda leaf, start, count: order[start : start + count]  # noqa: E731
    for k in (1, 40_000, n - 6):
        want = _reference_keep(keys, None, k, order.tolist())[0].tolist()
        for chunk in (4096, 1 << 20):  # chunks smaller and larger than the tie split's blocks
            got = _radix.radix_select_keep(keys, [None], k, index_fn=index_fn, chunk=chunk, index_total=n)[0]
            assert got.tolist() == want, (k, chunk)


def test_index_ties_follow_the_given_global_order():
    keys = [torch.ones(8)]
    order = [5, 3, 7, 0, 6, 1, 4, 2]  # the global index of each local entry (a shard's view)
    index_fn = lambda leaf, start, count: torch.tensor(order[start : start + count])  # noqa: E731
    got = _radix.radix_select_keep(keys, [None], 3, index_fn=index_fn, chunk=3)[0]
    assert got.tolist() == _reference_keep(keys, None, 3, order)[0].tolist()
    assert (~got).nonzero().view(-1).tolist() == [3, 5, 7]  # global indices 0, 1, 2


def test_reduce_none_and_identity_reduce_give_the_same_cut():
    g = torch.Generator().manual_seed(2)
    keys = [torch.randn(50, generator=g), torch.randint(0, 3, (40,), generator=g).float()]
    alive = [None, None]
    plain = _radix.radix_cut(keys, alive, 30, key_fn=torch.abs)
    same = _radix.radix_cut(keys, alive, 30, key_fn=torch.abs, reduce=lambda h: h)
    assert (int(plain.prefix), plain.due, plain.ties) == (int(same.prefix), same.due, same.ties)


def test_reduce_sums_every_pass_as_a_second_identical_shard_would():
    # A reduce that doubles every histogram is two processes holding the same keys: the 2k-th of the
    # doubled multiset is the k-th key, with twice the ties.
    g = torch.Generator().manual_seed(3)
    keys = [torch.randint(0, 5, (64,), generator=g).float()]
    for k in (1, 10, 33, 64):
        one = _radix.radix_cut(keys, [None], k)
        two = _radix.radix_cut(keys, [None], 2 * k, reduce=lambda h: h * 2)
        assert int(one.prefix) == int(two.prefix) and two.ties == 2 * one.ties and two.due == 2 * one.due


def test_counted_leaves_out_a_replica():
    keys = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5])]
    cut = _radix.radix_cut(keys, [None, None], 1, counted=[True, False])
    assert cut.prefix.item() == _radix.radix_cut(keys[:1], [None], 1).prefix.item()


def test_hash_keys_are_deterministic_non_negative_and_exact_past_2_31():
    index = torch.tensor([0, 1, 2**31 - 1, 2**31, 2**40 + 3, 2**61])
    a = _hashstream.hash_keys(12345, index)
    assert torch.equal(a, _hashstream.hash_keys(12345, index))
    assert bool((a >= 0).all()) and bool((a < 2**62).all())
    assert len(set(a.tolist())) == len(index)
    assert not torch.equal(a, _hashstream.hash_keys(12346, index))
    for d in (1, 2**20 + 5, 2**40):  # a seed change is not an index change (the seed is mixed nonlinearly)
        assert not torch.equal(_hashstream.hash_keys(12345 ^ d, index), _hashstream.hash_keys(12345, index ^ d))
    many = _hashstream.hash_keys(7, torch.arange(1 << 16))
    top = (many >> 61).float().mean().item()  # the top bit of 62: about half set
    assert 0.45 < top < 0.55 and len(set(many.tolist())) == 1 << 16


def test_hash_stream_one_process():
    w = torch.randn(6, 7)
    gen = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    m = fp.random_unstructured(w, 0.5, stream="hash", generator=gen())
    assert int((~m).sum()) == 21 and torch.equal(m, fp.random_unstructured(w, 0.5, stream="hash", generator=gen()))
    assert torch.equal(m, fp.global_unstructured({"w": w}, 0.5, method="random", stream="hash", generator=gen())["w"])
    prior = torch.rand(6, 7) > 0.5
    again = fp.random_unstructured(w, 3, mask=prior, stream="hash", generator=gen())
    assert int((prior & ~again).sum()) == 3 and not bool((again & ~prior).any())
    s = fp.random_structured(w, 2, 1, stream="hash", generator=gen())
    assert s.all(0).sum() == 5 and torch.equal(s, s.all(0, keepdim=True).expand_as(s))
    with pytest.raises(ValueError, match="stream"):
        fp.random_unstructured(w, 0.5, stream="numpy")
    with pytest.raises(ValueError, match="stream"):
        fp.global_unstructured({"w": w}, 0.5, stream="hash")  # L1 has no stream


def test_flat_index_of_a_shard_is_exact_past_2_31():
    from funcprune._dtensor import flat_index

    shape = (5, 2**31 + 5)  # a shard's block, never materialized: only the indices asked for
    for offset, local_shape in (((2, 0), (2, 2**31 + 5)), ((0, 2**30), (5, 2**30 + 1))):
        n = math.prod(local_shape)
        for start in (0, n - 3):
            got = flat_index(offset, local_shape, shape, start, 3, base=7).tolist()
            want = [
                7 + (offset[0] + p // local_shape[1]) * shape[1] + offset[1] + p % local_shape[1]
                for p in range(start, start + 3)
            ]
            assert got == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_the_cut_leaves_its_keys_bit_for_bit_unchanged_nan_payloads_included(dtype):
    """Rule: a selection is pure: keys holding NaNs with any payload are not written to."""
    ints = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}[dtype]
    keys = torch.rand(64, dtype=dtype)
    nan = torch.tensor(float("nan"), dtype=dtype).view(ints) | 0x3  # a NaN with a non-canonical payload
    keys.view(ints)[5] = nan
    before = keys.view(ints).clone()
    _radix.radix_select_keep([keys], [None], 10)
    assert torch.equal(keys.view(ints), before)


@pytest.mark.parametrize("largest", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int32, torch.int64])
def test_the_cut_reuses_only_its_own_temporaries_never_the_callers_keys(dtype, largest):
    """Rule: the in-place clamp and order flip run on the radix's own copy of the key bits (identity
    ``key_fn`` on the caller's keys, floating or integer, smallest or largest), and the masks are the
    oracle's: a stable sort of the keys (ties to the lowest index)."""
    g = torch.Generator().manual_seed(3)
    keys = [torch.randint(0, 50, (300,), generator=g).to(dtype), torch.randint(0, 50, (7, 11), generator=g).to(dtype)]
    before = [k.clone() for k in keys]
    got = _radix.radix_select_keep(keys, [None, None], 100, largest=largest, chunk=64)
    assert all(torch.equal(k, b) for k, b in zip(keys, before))
    flat = torch.cat([k.reshape(-1) for k in keys]).to(torch.float64)
    order = torch.sort(-flat if largest else flat, stable=True).indices[:100]
    want = torch.ones(flat.numel(), dtype=torch.bool)
    want[order] = False
    assert torch.equal(torch.cat([m.reshape(-1) for m in got]), want)
