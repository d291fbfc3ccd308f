"""N:M, block and channel patterns: differential against torch.ao.pruning and torch.nn.utils.prune."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from _torch_ref import torch_mask
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.ao.pruning import WeightNormSparsifier

import funcprune as fp
from funcprune.patterns import block_structured, channels_kept, nm_structured, prune_channels, satisfies_nm


def weight_norm_mask(w, **config):
    """torch.ao.pruning.WeightNormSparsifier's mask for a 2-D weight ``w``."""
    model = nn.Sequential(nn.Linear(w.shape[1], w.shape[0]))
    model[0].weight.data = w.clone()
    sparsifier = WeightNormSparsifier(**config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsifier.prepare(model, config=[{"tensor_fqn": "0.weight"}])
        sparsifier.step()
    return model[0].parametrizations.weight[0].mask.bool()


def loop_nm(scores, n, m, dim, mask=None):
    """Group-by-group reference: the n largest alive |scores| of each group (sorted, stable)."""
    moved = scores.abs().movedim(dim, -1).reshape(-1, m)
    alive = torch.ones_like(moved, dtype=torch.bool) if mask is None else mask.movedim(dim, -1).reshape(-1, m)
    out = torch.zeros_like(moved, dtype=torch.bool)
    for g in range(moved.shape[0]):
        order = sorted((i for i in range(m) if alive[g, i]), key=lambda i: -float(moved[g, i]))
        out[g, order[:n]] = True
    return out.reshape(scores.movedim(dim, -1).shape).movedim(-1, dim)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_matches_weight_norm_sparsifier(n, m):
    torch.manual_seed(n * 10 + m)
    w = torch.randn(8, 32)
    ours = nm_structured(w, n, m)
    theirs = weight_norm_mask(w, sparsity_level=1.0, sparse_block_shape=(1, m), zeros_per_block=m - n)
    assert torch.equal(ours, theirs)
    assert bool(satisfies_nm(ours, n, m)) and int(ours.sum()) == w.numel() * n // m


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 4), dim=st.integers(-3, 2), seed=st.integers(0, 2**16), masked=st.booleans())
def test_nm_any_dim_on_top_of_mask(n, dim, seed, masked):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 8, 12, generator=g)
    mask = torch.rand(4, 8, 12, generator=g) > 0.4 if masked else None
    ours = nm_structured(scores, n, 4, dim, mask=mask)
    assert torch.equal(ours, loop_nm(scores, n, 4, dim % 3, mask))
    assert bool(satisfies_nm(ours, n, 4, dim))
    if mask is not None:
        assert not (ours & ~mask).any()


def test_nm_device_purity_and_dtype(device):
    w = torch.randn(4, 8, device=device)
    mask = torch.rand(4, 8, device=device) > 0.3
    w0, mask0 = w.clone(), mask.clone()
    out = nm_structured(w, 2, 4, mask=mask.float())
    assert out.dtype == torch.bool and out.device == w.device
    assert torch.equal(w, w0) and torch.equal(mask, mask0)
    assert torch.equal(out, nm_structured(w, 2, 4, mask=mask))


def test_nm_vmap_and_meta():
    w = torch.randn(5, 4, 8)
    assert torch.equal(
        torch.vmap(lambda x: nm_structured(x, 2, 4, 0))(w), torch.stack([nm_structured(x, 2, 4, 0) for x in w])
    )
    meta = nm_structured(torch.empty(4, 8, device="meta"), 2, 4, mask=torch.ones(4, 8, dtype=torch.bool, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (4, 8) and meta.dtype == torch.bool
    assert torch.vmap(lambda x: satisfies_nm(x, 2, 4))(torch.stack([nm_structured(x, 2, 4) for x in w])).all()


def test_satisfies_nm_examples():
    assert bool(satisfies_nm(torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]]), 2, 4))
    assert not bool(satisfies_nm(torch.tensor([[1, 1, 1, 0]]), 2, 4))
    assert bool(satisfies_nm(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 1, 2, dim=1))
    assert not bool(satisfies_nm(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 1, 2, dim=0))


@pytest.mark.parametrize(
    "args,err",
    [
        ((5, 4), ValueError),  # n > m
        ((-1, 4), ValueError),
        ((0, 0), ValueError),
        ((2, 3), ValueError),  # 8 not divisible by 3
        ((2.0, 4), TypeError),
        ((2, 4, 2), IndexError),
    ],
)
def test_nm_errors(args, err):
    with pytest.raises(err):
        nm_structured(torch.randn(4, 8), *args)
    with pytest.raises(err):
        satisfies_nm(torch.ones(4, 8), *args)


def test_nm_error_names_the_problem():
    with pytest.raises(ValueError, match="not divisible by group_size=3"):
        nm_structured(torch.randn(4, 8), 2, 3)
    with pytest.raises(ValueError, match="kept_per_group=5, group_size=4"):
        nm_structured(torch.randn(4, 8), 5, 4)
    with pytest.raises(TypeError, match="kept_per_group must be an int"):
        nm_structured(torch.randn(4, 8), 2.0, 4)
    with pytest.raises(TypeError, match="group_size must be an int"):
        satisfies_nm(torch.ones(4, 8), 2, 4.0)


def test_nm_counts_are_named_and_the_mask_is_keyword_only():
    w = torch.randn(4, 8)
    assert torch.equal(nm_structured(w, kept_per_group=2, group_size=4, dim=1), nm_structured(w, 2, 4, 1))
    assert bool(satisfies_nm(nm_structured(w, 2, 4), kept_per_group=2, group_size=4))
    with pytest.raises(TypeError):
        nm_structured(w, 2, 4, -1, torch.ones(4, 8, dtype=torch.bool))


def test_nm_ties_go_to_the_lower_index():
    # ties go to the lower index, also with the group running along dim 0
    assert nm_structured(torch.ones(1, 8), 2, 4).tolist() == [[True, True, False, False] * 2]
    assert nm_structured(torch.tensor([[5.0, 1, 1, 1]]), 2, 4).tolist() == [[True, True, False, False]]
    assert nm_structured(torch.ones(8, 1), 2, 4, dim=0).flatten().tolist() == [True, True, False, False] * 2
    assert nm_structured(torch.zeros(3, 8), 1, 8).tolist() == [[True] + [False] * 7] * 3
    # negative zero ties zero; a surviving NaN is the largest, as in torch.topk
    assert nm_structured(torch.tensor([[-0.0, 0.0, 0.0, 0.0]]), 1, 4).tolist() == [[True, False, False, False]]
    assert nm_structured(torch.tensor([[1.0, float("inf"), float("nan"), 2.0]]), 2, 4).tolist() == [
        [False, True, True, False]
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8])
@pytest.mark.parametrize("masked", [False, True])
def test_nm_ties_on_quantized_weights_match_a_stable_reference(dtype, masked):
    g = torch.Generator().manual_seed(3)
    w = torch.randint(-2, 3, (16, 24), generator=g).to(dtype)  # five levels: ties everywhere, zeros included
    mask = torch.rand(16, 24, generator=g) > 0.3 if masked else None
    for n, m, dim in ((2, 4, -1), (1, 4, 0), (3, 8, 1), (4, 4, -1)):
        ours = nm_structured(w, n, m, dim, mask=mask)
        assert torch.equal(ours, loop_nm(w.double(), n, m, dim % 2, mask))
        assert bool(satisfies_nm(ours, n, m, dim))


def test_nm_with_a_prior_mask_keeps_alive_entries_first_whatever_they_hold():
    inf, nan = float("inf"), float("nan")
    w = torch.tensor([[nan, inf, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[False, False, True, True, False, True, True, True]])
    assert nm_structured(w, 2, 4, mask=mask).tolist() == [[False, False, True, True, False, True, True, False]]
    # all-equal groups on top of a mask: the lowest alive indices
    ones = torch.ones(2, 8)
    prior = torch.tensor([[False, True, True, True] * 2, [True, False, False, True] * 2])
    assert nm_structured(ones, 2, 4, mask=prior).tolist() == [
        [False, True, True, False] * 2,
        [True, False, False, True] * 2,
    ]
    assert torch.equal(
        torch.vmap(lambda x: nm_structured(ones[:1], 2, 4, mask=x))(prior.view(2, 1, 8)),
        nm_structured(ones, 2, 4, mask=prior).view(2, 1, 8),
    )


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize("amount", [0.25, 0.5, 0.6])
@pytest.mark.parametrize("block", [(2, 4), (1, 8), (4, 1)])
def test_block_matches_weight_norm_sparsifier(norm, amount, block):
    torch.manual_seed(7)
    w = torch.randn(8, 16)
    ours = block_structured(w, amount, block, n=norm)
    theirs = weight_norm_mask(w, sparsity_level=amount, sparse_block_shape=block, norm=norm)
    assert torch.equal(ours, theirs)


def test_block_on_top_of_mask_and_counts():
    torch.manual_seed(3)
    w = torch.randn(4, 6, 8)
    mask = fp.l1_unstructured(w, 0.5)
    out = block_structured(w, 0.5, (2, 3, 4), mask=mask)
    assert not (out & ~mask).any()
    blocks = out.reshape(2, 2, 2, 3, 2, 4).any(dim=(1, 3, 5))
    assert int(blocks.sum()) == 4  # 8 alive blocks, half pruned
    # Pooled over survivors only: a block whose survivors are tiny goes first.
    w2 = torch.ones(2, 4)
    m2 = torch.tensor([[True, True, False, False], [True, True, False, False]])
    w2[:, :2] = 0.01
    w2[:, 2:] = 100.0  # large but pruned entries do not count
    assert torch.equal(block_structured(w2, 1, (2, 2), mask=m2), torch.zeros(2, 4, dtype=torch.bool))


def test_block_int_amount_is_a_block_count():
    out = block_structured(torch.randn(8, 8), 3, (2, 2))
    assert int((~out).sum()) == 3 * 4


def test_block_vmap_amounts_and_meta():
    w = torch.randn(8, 8)
    amounts = torch.tensor([0.0, 0.25, 0.5, 1.0])
    batched = torch.vmap(lambda a: block_structured(w, a, (2, 2)), in_dims=0)(amounts)
    assert torch.equal(batched, torch.stack([block_structured(w, float(a), (2, 2)) for a in amounts]))
    meta = block_structured(
        torch.empty(8, 8, device="meta"), 0.5, (2, 2), mask=torch.ones(8, 8, dtype=torch.bool, device="meta")
    )
    assert meta.device.type == "meta" and meta.shape == (8, 8)


def test_block_device(device):
    w = torch.randn(4, 4, device=device)
    assert block_structured(w, 0.5, (2, 2)).device == w.device


@pytest.mark.parametrize(
    "block,err", [((3, 4), ValueError), ((2,), ValueError), ((0, 4), ValueError), (2, TypeError), ((2.0, 4), TypeError)]
)
def test_block_shape_errors(block, err):
    with pytest.raises(err):
        block_structured(torch.randn(8, 8), 0.5, block)


def test_block_amount_errors():
    with pytest.raises(ValueError, match="blocks"):
        block_structured(torch.randn(4, 4), 5, (2, 2))
    with pytest.raises(ValueError):
        block_structured(torch.randn(4, 4), 1.5, (2, 2))


@pytest.mark.parametrize("amount,n", [(0.5, 2), (2, 1), (0.34, float("inf"))])
def test_prune_channels_matches_ln_structured_and_masks_bias(amount, n):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = prune_channels(params, amount, n)
    for prefix in ("0", "2"):
        w = params[f"{prefix}.weight"]
        expected = torch_mask(torch_prune.LnStructured(amount, n, dim=0), w)
        assert torch.equal(masks[f"{prefix}.weight"], expected)
        assert torch.equal(masks[f"{prefix}.bias"], channels_kept(expected, 0))
    # Pruned output channels now output exactly zero (without the bias mask they output the bias).
    x = torch.randn(2, 3, 6, 6)
    conv_out = fp.functional_call(
        model[0],
        {"weight": params["0.weight"], "bias": params["0.bias"]},
        (x,),
        masks={"weight": masks["0.weight"], "bias": masks["0.bias"]},
    )
    dead = ~channels_kept(masks["0.weight"], 0)
    assert dead.any() and (conv_out[:, dead] == 0).all()


def test_prune_channels_on_top_of_masks_and_purity():
    params = {"fc.weight": torch.randn(6, 4), "fc.bias": torch.randn(6), "other.weight": torch.randn(3, 3)}
    old = {"fc.bias": torch.tensor([True, False, True, True, True, True])}
    snapshot = {k: v.clone() for k, v in params.items()}
    masks = prune_channels(params, 2, masks=old, include=["fc.weight"])
    assert set(masks) == {"fc.weight", "fc.bias"}
    assert not masks["fc.bias"][1]
    assert int(channels_kept(masks["fc.weight"]).sum()) == 4
    assert all(torch.equal(params[k], snapshot[k]) for k in params)
    assert "fc.bias" not in prune_channels(params, 2, include=["fc.weight"], bias=False)


def test_prune_channels_errors():
    params = {"fc.weight": torch.randn(6, 4), "fc.bias": torch.randn(5)}
    with pytest.raises(ValueError, match="fc.bias"):
        prune_channels(params, 1)
    with pytest.raises(ValueError, match="fc.weight"):
        prune_channels({"fc.weight": torch.randn(6, 4)}, 7)
    with pytest.raises(KeyError):
        prune_channels({"fc.weight": torch.randn(6, 4)}, 1, include=["nope"])
    with pytest.raises(IndexError):
        channels_kept(torch.ones(2, 2), 2)
