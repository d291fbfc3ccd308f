"""Compat N:M, block and channel-with-bias methods: module layout, containers, errors."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from torch.ao.pruning import WeightNormSparsifier

import funcprune.compat as prune
from funcprune.compat._beyond import (
    BlockStructured,
    NMStructured,
    block_structured,
    ln_structured_with_bias,
    nm_structured,
)
from funcprune.patterns import block_structured as block_mask
from funcprune.patterns import nm_structured as nm_mask


def test_nm_module_layout_and_mask():
    torch.manual_seed(0)
    lin = nn.Linear(16, 4)
    w = lin.weight.detach().clone()
    nm_structured(lin, "weight", 2, 4)
    assert [n for n, _ in lin.named_parameters()] == ["bias", "weight_orig"]
    assert lin.weight_mask.dtype == w.dtype
    assert torch.equal(lin.weight_mask.bool(), nm_mask(w, 2, 4))
    assert torch.equal(lin.weight, w * lin.weight_mask)
    assert isinstance(lin._forward_pre_hooks[next(iter(lin._forward_pre_hooks))], NMStructured)
    torch_prune.remove(lin, "weight")  # torch's own remove accepts the hook
    assert torch.equal(lin.weight.detach(), w * nm_mask(w, 2, 4))


def test_nm_in_a_container_acts_on_survivors():
    torch.manual_seed(1)
    lin = nn.Linear(8, 6)
    w = lin.weight.detach().clone()
    prune.l1_unstructured(lin, "weight", 0.5)
    first = lin.weight_mask.bool().clone()
    nm_structured(lin, "weight", 2, 4)
    assert isinstance(lin._forward_pre_hooks[next(iter(lin._forward_pre_hooks))], prune.PruningContainer)
    assert torch.equal(lin.weight_mask.bool(), nm_mask(w, 2, 4, mask=first))


def test_nm_counts_are_named_and_a_non_int_count_is_a_type_error_as_in_the_core():
    lin = nn.Linear(8, 2)
    w = lin.weight.detach().clone()
    nm_structured(lin, "weight", kept_per_group=1, group_size=4, dim=-1)
    hook = lin._forward_pre_hooks[next(iter(lin._forward_pre_hooks))]
    assert (hook.kept_per_group, hook.group_size, hook.dim) == (1, 4, -1)
    assert torch.equal(lin.weight_mask.bool(), nm_mask(w, kept_per_group=1, group_size=4))
    for bad in ((2.0, 4), (2, 4.0), (True, 4)):
        with pytest.raises(TypeError, match="must be an int"):
            NMStructured(*bad)
        with pytest.raises(TypeError, match="must be an int"):
            nm_mask(w, *bad)
    with pytest.raises(ValueError, match="kept_per_group=5, group_size=4"):
        NMStructured(5, 4)


def test_block_matches_weight_norm_sparsifier_and_container():
    torch.manual_seed(2)
    lin = nn.Linear(16, 8)
    w = lin.weight.detach().clone()
    block_structured(lin, "weight", 0.5, (2, 4), n=2)
    ref = nn.Sequential(nn.Linear(16, 8))
    ref[0].weight.data = w.clone()
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(2, 4), norm=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsifier.prepare(ref, config=[{"tensor_fqn": "0.weight"}])
        sparsifier.step()
    assert torch.equal(lin.weight_mask.bool(), ref[0].parametrizations.weight[0].mask.bool())
    before = lin.weight_mask.bool().clone()
    BlockStructured.apply(lin, "weight", 1, (2, 4), n=2)
    assert torch.equal(lin.weight_mask.bool(), block_mask(w, 1, (2, 4), 2, mask=before))


def test_importance_scores():
    lin = nn.Linear(4, 1)
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    nm_structured(lin, "weight", 1, 2, importance_scores=scores)
    assert lin.weight_mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_ln_structured_with_bias_matches_torch_and_zeroes_channels():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 6, 3)
    reference = copy.deepcopy(conv)
    ln_structured_with_bias(conv, amount=0.5, n=2)
    torch_prune.ln_structured(reference, "weight", amount=0.5, n=2, dim=0)
    assert torch.equal(conv.weight_mask, reference.weight_mask)
    kept = reference.weight_mask.sum(dim=(1, 2, 3)) > 0
    assert torch.equal(conv.bias_mask.bool(), kept)
    out = conv(torch.randn(1, 2, 5, 5))
    assert (out[:, ~kept] == 0).all() and not (reference(torch.randn(1, 2, 5, 5))[:, ~kept] == 0).all()


def test_ln_structured_with_bias_without_bias():
    lin = nn.Linear(3, 4, bias=False)
    ln_structured_with_bias(lin, 1, 1)
    assert hasattr(lin, "weight_mask") and not hasattr(lin, "bias_mask")


@pytest.mark.parametrize(
    "call",
    [
        lambda m: nm_structured(m, "weight", 5, 4),
        lambda m: nm_structured(m, "weight", 2, 3),  # 8 columns not divisible by 3
        lambda m: block_structured(m, "weight", 0.5, (3, 3)),
        lambda m: block_structured(m, "weight", 1.5, (2, 2)),
        lambda m: block_structured(m, "weight", 100, (2, 2)),
    ],
)
def test_errors_leave_module_untouched(call):
    lin = nn.Linear(8, 4)
    state = copy.deepcopy(lin.state_dict())
    with pytest.raises((ValueError, TypeError)):
        call(lin)
    assert list(lin.state_dict()) == list(state) and not lin._forward_pre_hooks
    assert all(torch.equal(lin.state_dict()[k], v) for k, v in state.items())


def test_ln_structured_with_bias_shape_error_untouched():
    lin = nn.Linear(3, 4)
    lin.bias = nn.Parameter(torch.zeros(5))
    with pytest.raises(ValueError, match="bias"):
        ln_structured_with_bias(lin, 1, 2)
    assert not hasattr(lin, "weight_mask")
