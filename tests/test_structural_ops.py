"""Every ATen op the tracer meets gets a channel rule or a NotImplementedError naming the op and the submodule.

Each model here is traced, pruned at 50% with prune_groups and shrunk: the smaller model's output
must equal the masked model's (funcprune.functional_call with the masks, the oracle).
"""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import funcprune as fp
from funcprune.structural import group_report, groups, prune_groups, shrink


def shrinks_exactly(model, args, kwargs=None, *, min_groups=1):
    """groups -> prune_groups(50%) -> shrink(check=False): the shrunk output equals the masked one."""
    model.eval()
    gs = groups(model, args, kwargs)
    assert len(gs) >= min_groups, gs
    params = dict(model.named_parameters())
    masks = prune_groups(params, gs, 0.5)
    small = shrink(model, masks, args, groups=gs, kwargs=kwargs, check=False).eval()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        want = fp.functional_call(model, params, args, kwargs, masks=masks)
        got = small(*args, **(kwargs or {}))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    return gs


class BinaryMax(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op, self.a, self.b, self.c = op, nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(self.op(self.a(x), self.b(x)))


@pytest.mark.parametrize("op", [torch.max, torch.min, torch.maximum, torch.minimum])
def test_binary_max_and_min_are_elementwise_and_join_both_inputs(op):
    (g,) = shrinks_exactly(BinaryMax(op), (torch.randn(3, 4),))
    assert {m.name for m in g.members} >= {"a.weight", "b.weight", "c.weight"}


class PoolWithIndices(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 3), nn.Linear(8, 2)

    def forward(self, x):
        y, idx = F.max_pool2d(self.a(x), 2, return_indices=True)
        return self.c(y.amax((2, 3)) + 0 * idx.amax((2, 3)).to(y.dtype))


def test_max_pool_with_indices_carries_channels_on_values_and_indices():
    (g,) = shrinks_exactly(PoolWithIndices(), (torch.randn(2, 3, 8, 8),))
    assert {m.name for m in g.members} >= {"a.weight", "c.weight"}


class SingleHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(4, 6)
        self.q, self.k, self.v, self.o = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.h(x))
        return self.o(F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x)))


@pytest.mark.parametrize("shape", [(2, 5, 4), (2, 2, 3, 5, 4)], ids=["3d", "5d"])
def test_single_head_attention_on_3d_and_5d_inputs(shape):
    model = SingleHead()
    report = group_report(model, (torch.randn(*shape),))
    # the q/k/v width is the head dim (1/sqrt(width) scales the scores): excluded with the reason
    qkv = [g for g in report.excluded if any(m.name in ("q.weight", "v.weight") for m in g.members)]
    assert qkv and all("head dim" in g.reason for g in qkv)
    (g,) = shrinks_exactly(model, (torch.randn(*shape),))  # the hidden width before the attention is free
    assert {m.name for m in g.members} == {"h.weight", "h.bias", "q.weight", "k.weight", "v.weight"}


class Sorted(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim, self.a, self.c = dim, nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        values, order = self.a(x).sort(dim=self.dim)
        return self.c(values + order[:1].to(values.dtype))  # the indices, like the values, keep the channels


def test_sort_over_rows_keeps_channels_and_over_channels_is_a_barrier():
    shrinks_exactly(Sorted(0), (torch.randn(3, 4),))
    report = group_report(Sorted(-1), (torch.randn(3, 4),))
    assert not report.groups and any("ordering" in g.reason for g in report.excluded)


class Unpool(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        y, idx = F.max_pool2d(self.a(x), 2, return_indices=True)
        return F.max_unpool2d(y, idx, 2)


def test_an_op_without_a_rule_names_the_op_and_the_submodule():
    with pytest.raises(NotImplementedError, match=r"max_unpool2d.*submodule <top level> \(Unpool\)"):
        groups(Unpool(), (torch.randn(2, 3, 8, 8),))


def _t5(cls):
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
    )
    return getattr(T, cls)(cfg).eval()


@pytest.mark.slow
@pytest.mark.parametrize("cls", ["T5EncoderModel", "T5Model"])
def test_t5_relative_position_buckets_trace_and_heads_and_mlp_shrink_exactly(cls):
    """T5's buckets use binary torch.min; heads (with the relative bias table) and the MLP shrink exactly;
    cross-attention heads, whose zero bias is built with a fixed head count, are excluded with the reason."""
    model = _t5(cls)
    ids = torch.randint(0, 64, (2, 7))
    kwargs = {} if cls == "T5EncoderModel" else {"decoder_input_ids": torch.randint(0, 64, (2, 5)), "use_cache": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gs = shrinks_exactly(model, (ids,), kwargs, min_groups=3)
        report = group_report(model, (ids,), kwargs)
    heads = [g for g in gs if g.kind == "heads"]
    assert heads and all(any("relative_attention_bias" in m.name for m in g.members) for g in heads)
    assert all(g.channels == 24 for g in gs if g.kind == "channels")
    if cls == "T5Model":
        cross = [
            g
            for g in report.excluded
            if any(m.name.endswith("EncDecAttention.q.weight") and m.dim == 0 for m in g.members)
        ]
        assert len(cross) == 2 and all("head" in g.reason for g in cross)
