"""funcprune.structural.groups: coupled channel groups traced with torch.export.

Every model is checked for well-formed groups (names, dims, bounds, no index claimed twice, every
conv/linear output dim accounted for) and the torchvision models are anchored against
Torch-Pruning's DependencyGraph: the (param, dim) pairs its groups cover equal ours (inexact groups
included), with the documented differences named per model.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from funcprune.structural import Group, Member, group_report, groups


# --- checks shared by every model ---------------------------------------------------------------
def check_report(model, report):
    """Well-formed groups: members exist, fit their dims, no index is in two groups."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    claimed = {}
    everything = report.groups + report.inexact + report.excluded
    for g in everything:
        assert isinstance(g, Group) and g.channels >= 1 and g.members
        assert g.exact == (g not in report.inexact) or g in report.excluded
        if g in report.excluded or g in report.inexact:
            assert g.reason, g
        for m in g.members:
            assert isinstance(m, Member)
            tensor = (buffers if m.buffer else params).get(m.name)
            assert tensor is not None, f"{m.name} is not a {'buffer' if m.buffer else 'parameter'}"
            assert 0 <= m.dim < tensor.dim(), m
            assert m.offset + g.channels * m.unit <= tensor.shape[m.dim], (m, g.channels, tensor.shape)
            for c in range(m.offset, m.offset + g.channels * m.unit):
                key = (m.name, m.dim, c)
                assert key not in claimed, f"{key} in two groups: {claimed[key]} and {g.reason}"
                claimed[key] = g.reason or "group"
        if g.pools > 1:
            assert g.channels % g.pools == 0
    # no conv/linear output dim is lost silently: each is in a group, inexact or excluded (reason)
    covered = {(m.name, m.dim) for g in everything for m in g.members}
    canonical = {id(p): n for n, p in params.items()}  # a tied weight has one name
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert (canonical[id(module.weight)], 0) in covered, f"{name}.weight dim 0 is in no group"
    return covered


def pairs(groups_):
    return {(m.name, m.dim) for g in groups_ for m in g.members}


def by_producer(report, name):
    found = [
        g
        for g in report.groups + report.inexact + report.excluded
        if Member(name, 0) in g.members or any(m.name == name and m.dim == 0 for m in g.members)
    ]
    assert len(found) == 1, (name, found)
    return found[0]


# --- custom models ------------------------------------------------------------------------------
class ResidualMLP(nn.Module):
    def __init__(self, d=16, hidden=32):
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.fc1 = nn.ModuleList([nn.Linear(d, hidden) for _ in range(2)])
        self.fc2 = nn.ModuleList([nn.Linear(hidden, d) for _ in range(2)])
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        for a, b in zip(self.fc1, self.fc2):
            h = h + b(F.relu(a(h)))
        return self.head(h)


def test_residual_mlp_couples_the_residual_width():
    model = ResidualMLP()
    report = group_report(model, (torch.randn(2, 8),))
    check_report(model, report)
    assert len(report.groups) == 3 and not report.inexact
    width = by_producer(report, "embed.weight")
    assert width.channels == 16
    assert {
        ("fc2.0.weight", 0),
        ("fc2.1.weight", 0),
        ("fc1.0.weight", 1),
        ("fc1.1.weight", 1),
        ("head.weight", 1),
        ("embed.bias", 0),
        ("fc2.1.bias", 0),
    } <= pairs([width])
    hidden = by_producer(report, "fc1.0.weight")
    assert pairs([hidden]) == {("fc1.0.weight", 0), ("fc1.0.bias", 0), ("fc2.0.weight", 1)}
    assert [g.reason for g in report.excluded] == ["reaches the model output"]


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 10, 3)
        self.fc = nn.Linear(10 * 2 * 2, 5)

    def forward(self, x):
        y = self.bn(torch.cat([F.relu(self.a(x)), self.b(x)], dim=1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.c(y), 2), 1))


def test_two_branch_concat_gives_offsets_and_flatten_gives_units():
    model = Concat()
    report = group_report(model, (torch.randn(1, 3, 8, 8),))
    check_report(model, report)
    a, b, c = (by_producer(report, n) for n in ("a.weight", "b.weight", "c.weight"))
    assert a.channels == 8 and Member("c.weight", 1, 0, 1) in a.members
    assert Member("bn.running_mean", 0, 0, 1, True) in a.members and Member("bn.weight", 0, 0, 1) in a.members
    assert b.channels == 6 and Member("c.weight", 1, 8, 1) in b.members and Member("bn.bias", 0, 8, 1) in b.members
    assert c.channels == 10 and Member("fc.weight", 1, 0, 4) in c.members  # flatten C*H*W: unit H*W


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 12, 1)
        self.gc = nn.Conv2d(12, 12, 3, groups=3, padding=1)
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.dw(self.stem(x))))
        return self.out(F.relu(self.gc(F.relu(self.pw(x))))).mean((2, 3))


def test_depthwise_and_grouped_convs():
    model = Grouped()
    report = group_report(model, (torch.randn(1, 3, 10, 10),))
    check_report(model, report)
    stem = by_producer(report, "stem.weight")  # depthwise: out channel i <-> in channel i
    assert {("dw.weight", 0), ("dw.bias", 0), ("bn.weight", 0), ("pw.weight", 1)} <= pairs([stem])
    assert ("dw.weight", 1) not in pairs([stem])
    pw = by_producer(report, "pw.weight")  # grouped conv input: the same local positions per conv group
    assert pw.channels == 4 and pw.pools == 1
    assert [m for m in pw.members if m.name == "pw.weight"] == [Member("pw.weight", 0, o, 1) for o in (0, 4, 8)]
    assert Member("gc.weight", 1, 0, 1) in pw.members
    gc = by_producer(report, "gc.weight")  # grouped conv output: an equal count per conv group
    assert gc.channels == 12 and gc.pools == 3 and Member("out.weight", 1, 0, 1) in gc.members


class TiedLM(nn.Module):
    def __init__(self, vocab=50, d=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.fc1, self.fc2 = nn.Linear(d, 32), nn.Linear(32, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.fc2(F.gelu(self.fc1(h)))
        return self.head(h)


def test_weight_tied_embedding_and_head():
    model = TiedLM()
    report = group_report(model, (torch.randint(0, 50, (1, 7)),))
    check_report(model, report)
    hidden = [g for g in report.groups if ("emb.weight", 1) in pairs([g])]
    assert len(hidden) == 1 and hidden[0].channels == 16  # the hidden dim couples embedding and head
    assert {("fc1.weight", 1), ("fc2.weight", 0), ("fc2.bias", 0)} <= pairs(hidden)
    assert all(m.name != "head.weight" for g in report.groups for m in g.members)  # one name per tensor
    vocab = [g for g in report.excluded if ("emb.weight", 0) in pairs([g])]
    assert len(vocab) == 1 and "token ids" in vocab[0].reason and "model output" in vocab[0].reason


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.mha = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        h = self.proj(x)
        return self.mha(h, h, h, need_weights=False)[0]


def test_multihead_attention_prunes_heads_of_the_fused_in_proj():
    model = Attention()
    report = group_report(model, (torch.randn(1, 5, 8),))
    check_report(model, report)
    heads = [g for g in report.groups if g.kind == "heads"]
    assert len(heads) == 1 and heads[0].channels == 4 and heads[0].exact
    assert set(heads[0].members) == {
        *(Member("mha.in_proj_weight", 0, o, 4) for o in (0, 16, 32)),
        *(Member("mha.in_proj_bias", 0, o, 4) for o in (0, 16, 32)),
        Member("mha.out_proj.weight", 1, 0, 4),
    }
    proj = by_producer(report, "proj.weight")  # the width into the attention: in_proj's columns
    assert proj in report.groups and pairs([proj]) == {("proj.weight", 0), ("proj.bias", 0), ("mha.in_proj_weight", 1)}
    out = by_producer(report, "mha.out_proj.weight")
    assert "model output" in out.reason
    # a batch of 3: MultiheadAttention merges batch and heads (L, B*H, hd): heads become a barrier
    report = group_report(model, (torch.randn(3, 5, 8),))
    check_report(model, report)
    assert not [g for g in report.groups if g.kind == "heads"]
    barred = [g for g in report.excluded if "mixes channels with another dim" in g.reason]
    assert pairs(barred) == {("mha.in_proj_weight", 0), ("mha.in_proj_bias", 0), ("mha.out_proj.weight", 1)}


class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.roll(self.b(F.relu(self.a(x))), 1, dims=1))


def test_roll_over_channels_is_a_barrier():
    model = Rolled()
    report = group_report(model, (torch.randn(1, 3, 4, 4),))
    check_report(model, report)
    assert pairs(report.groups) == pairs([by_producer(report, "a.weight")])  # a is untouched
    rolled = by_producer(report, "b.weight")
    assert rolled in report.excluded and "torch.roll over channels" in rolled.reason
    assert "submodule <top level>" in rolled.reason
    assert all(("c.weight", 1) not in pairs([g]) for g in report.groups)


class Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        return self.up(self.b(self.a(x)))


def test_an_op_without_a_rule_names_the_op_and_the_submodule():
    with pytest.raises(NotImplementedError, match=r"pixel_shuffle.*submodule up \(PixelShuffle\)"):
        groups(Shuffled(), (torch.randn(1, 3, 4, 4),))


class _ConstantScale(nn.Module):
    """Scales a conv's channels by a plain tensor attribute (not a parameter or buffer)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)
        self.scale = torch.linspace(0.5, 1.5, 8)
        self.offset = torch.tensor(0.25)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) * self.scale.view(1, -1, 1, 1) + self.offset))


def test_a_tensor_attribute_is_a_graph_constant_whose_channels_cannot_be_sliced():
    """A tensor the forward holds outside the parameters and buffers traces as a constant (as torch.export
    lifts it): it carries no channel, so the conv channels it scales are excluded, naming the op."""
    report = group_report(_ConstantScale(), (torch.randn(2, 3, 4, 4),))
    g = by_producer(report, "a.weight")
    assert g in report.excluded
    assert "elementwise op (aten.mul.Tensor, submodule <top level> (_ConstantScale))" in g.reason
    assert not report.groups and not report.inexact


def test_groups_returns_exact_groups_unless_asked_and_restores_train_mode():
    model = ResidualMLP()
    model.train()
    model.fc1[0].eval()
    assert groups(model, torch.randn(2, 8)) == list(group_report(model, (torch.randn(2, 8),)).groups)
    assert model.training and not model.fc1[0].training


def test_inexact_groups_name_the_normalization():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    report = group_report(model, (torch.randn(3, 4),))
    check_report(model, report)
    assert len(report.inexact) == 1 and "layer norm" not in report.inexact[0].reason
    assert "normalization across channels" in report.inexact[0].reason and "1 (LayerNorm)" in report.inexact[0].reason
    assert groups(model, (torch.randn(3, 4),), inexact=True) == list(report.groups + report.inexact)
    assert len(groups(model, (torch.randn(3, 4),))) == 1


# --- torchvision, anchored against Torch-Pruning ---------------------------------------------------
def tp_pairs(model, x):
    """The (param or buffer name, dim) pairs Torch-Pruning's groups cover."""
    tp = pytest.importorskip("torch_pruning")
    mods = {id(m): n for n, m in model.named_modules()}
    params = {id(p): n for n, p in model.named_parameters()}
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    out = set()
    for group in graph.get_all_groups(ignored_layers=[last], root_module_types=[nn.Conv2d, nn.Linear]):
        for dep, _ in group:
            m, handler = dep.target.module, dep.handler.__name__
            pre = mods.get(id(m), "") + "."
            if isinstance(m, nn.Parameter):  # TP prunes a bare parameter's last non-singleton dim
                out.add((params[id(m)], max(i for i, n in enumerate(m.shape) if n > 1)))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1
                if handler == "prune_out_channels" or depthwise:
                    out |= {(pre + "weight", 0)} | ({(pre + "bias", 0)} if m.bias is not None else set())
                else:
                    out.add((pre + "weight", 1))
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)):
                out |= {
                    (pre + n, 0)
                    for n in ("weight", "bias", "running_mean", "running_var")
                    if getattr(m, n, None) is not None
                }
            elif isinstance(m, nn.MultiheadAttention):  # TP prunes the embedding width through it
                out |= {(pre + "in_proj_weight", 1), (pre + "out_proj.weight", 0), (pre + "out_proj.bias", 0)}
    return out


def _heads_pairs(report):
    return pairs(g for g in report.groups if g.kind == "heads")


# model -> (input size, groups, inexact, excluded, what only we cover, TP or None if it cannot trace)
TORCHVISION = {
    "resnet18": (64, 12, 0, 1),
    "resnet50": (64, 37, 0, 1),
    "vgg11_bn": (64, 10, 0, 1),
    "mobilenet_v2": (64, 25, 0, 1),
    "mobilenet_v3_small": (64, 27, 0, 1),
    "densenet121": (64, 120, 0, 1),
    "efficientnet_b0": (64, 40, 0, 1),
    "convnext_tiny": (64, 18, 4, 1),
    "regnet_x_400mf": (64, 49, 0, 1),
    "shufflenet_v2_x0_5": (64, 18, 0, 36),
    "vit_b_16": (32, 24, 1, 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_groups_match_torch_pruning(name):
    tv = pytest.importorskip("torchvision")
    size, n_groups, n_inexact, n_excluded = TORCHVISION[name]
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None, **({"image_size": 32} if name.startswith("vit") else {}))
    model.eval()
    x = torch.randn(1, 3, size, size)
    report = group_report(model, (x,))
    check_report(model, report)
    assert (len(report.groups), len(report.inexact), len(report.excluded)) == (n_groups, n_inexact, n_excluded)
    assert any("model output" in g.reason for g in report.excluded)
    ours = pairs(report.groups + report.inexact)
    if name == "shufflenet_v2_x0_5":
        # Torch-Pruning 1.6.1 fails on its channel shuffle (ZeroDivisionError in its reshape
        # mapping); ours makes the shuffled channels a barrier: the branches' inner widths prune
        shuffled = [g for g in report.excluded if "mixes channels with another dim" in g.reason]
        assert len(shuffled) == n_excluded - 1 and all("InvertedResidual" in g.reason for g in shuffled)
        assert all(
            len({m.name.split(".branch")[0] for m in g.members if ".branch" in m.name}) == 1
            for g in report.groups[1:-1]
        )
        return
    theirs = tp_pairs(model, x)
    if name == "vit_b_16":
        # we prune attention heads of nn.MultiheadAttention (in_proj rows, out_proj columns);
        # Torch-Pruning prunes the width through it, which we cover via the residual group
        assert ours - theirs == _heads_pairs(report) and len(_heads_pairs(report)) == 36
        ours -= _heads_pairs(report)
    assert ours == theirs


@pytest.mark.slow
def test_convnext_layernorm_makes_the_residual_inexact():
    tv = pytest.importorskip("torchvision")
    model = tv.models.convnext_tiny(weights=None).eval()
    report = group_report(model, (torch.randn(1, 3, 32, 32),))
    assert all("LayerNorm" in g.reason and "normalization across channels" in g.reason for g in report.inexact)
    stage = [g for g in report.inexact if ("features.1.0.layer_scale", 0) in pairs([g])]
    assert len(stage) == 1 and stage[0].channels == 96


# --- Hugging Face transformers, small random configs ---------------------------------------------
def _hf(name):
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if name == "bert":
        return T.BertModel(
            T.BertConfig(
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                vocab_size=100,
                max_position_embeddings=32,
            )
        ), {}
    if name == "gpt2":
        return T.GPT2LMHeadModel(
            T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
        ), {"use_cache": False}
    return T.LlamaForCausalLM(
        T.LlamaConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=100,
            max_position_embeddings=32,
        )
    ), {"use_cache": False}


@pytest.mark.slow
def test_bert_heads_and_mlp():
    model, kw = _hf("bert")
    report = group_report(model, (torch.randint(0, 100, (1, 8)),), kw)
    check_report(model, report)
    heads = [g for g in report.groups if g.kind == "heads"]
    assert len(heads) == 2 and all(g.channels == 4 for g in heads)
    assert set(heads[0].members) >= {
        Member("encoder.layer.0.attention.self.query.weight", 0, 0, 16),
        Member("encoder.layer.0.attention.self.value.bias", 0, 0, 16),
        Member("encoder.layer.0.attention.output.dense.weight", 1, 0, 16),
    }
    mlp = [g for g in report.groups if g.kind == "channels"]
    assert len(mlp) == 2 and all(g.channels == 128 for g in mlp)
    # BertModel returns the hidden states: the residual width reaches the output
    hidden = [g for g in report.excluded if ("embeddings.word_embeddings.weight", 1) in pairs([g])]
    assert len(hidden) == 1 and "model output" in hidden[0].reason and hidden[0].channels == 64


@pytest.mark.slow
def test_gpt2_fused_qkv_heads_and_tied_head():
    model, kw = _hf("gpt2")
    report = group_report(model, (torch.randint(0, 100, (1, 8)),), kw)
    check_report(model, report)
    heads = [g for g in report.groups if g.kind == "heads"]
    assert len(heads) == 2 and heads[0].channels == 4
    assert {m for m in heads[0].members if m.name.endswith("c_attn.weight")} == {
        Member("transformer.h.0.attn.c_attn.weight", 1, o, 16) for o in (0, 64, 128)
    }  # Conv1D: out dim 1
    assert Member("transformer.h.0.attn.c_proj.weight", 0, 0, 16) in heads[0].members
    (residual,) = report.inexact
    assert residual.channels == 64 and ("transformer.wte.weight", 1) in pairs([residual])
    assert ("transformer.wpe.weight", 1) in pairs([residual]) and "ln_f (LayerNorm)" in residual.reason
    assert all(m.name != "lm_head.weight" for g in report.excluded + report.inexact for m in g.members)


@pytest.mark.slow
def test_llama_gqa_prunes_query_heads_with_their_kv_head():
    model, kw = _hf("llama")
    report = group_report(model, (torch.randint(0, 100, (1, 8)),), kw)
    check_report(model, report)
    heads = [g for g in report.groups if g.kind == "heads"]
    assert len(heads) == 2 and heads[0].channels == 2  # kv heads; 2 query heads of 16 each per kv head
    assert set(heads[0].members) == {
        Member("model.layers.0.self_attn.q_proj.weight", 0, 0, 32),
        Member("model.layers.0.self_attn.k_proj.weight", 0, 0, 16),
        Member("model.layers.0.self_attn.v_proj.weight", 0, 0, 16),
        Member("model.layers.0.self_attn.o_proj.weight", 1, 0, 32),
    }
    mlp = [g for g in report.groups if g.kind == "channels"]
    assert len(mlp) == 2 and pairs(mlp[:1]) == {
        ("model.layers.0.mlp.gate_proj.weight", 0),
        ("model.layers.0.mlp.up_proj.weight", 0),
        ("model.layers.0.mlp.down_proj.weight", 1),
    }
    (residual,) = report.inexact
    assert "mean across channels" in residual.reason and "LlamaRMSNorm" in residual.reason


# --- removing a group's channels equals zeroing them (the groups are complete) -------------------
def removed_equals_masked(model, args, kwargs, groups_, atol=1e-5):
    """Drop channel 0 and the last channel of each group: sliced tensors vs zeroed parameters.

    Removal runs through torch.func.functional_call with smaller tensors (F.conv2d, F.linear,
    F.batch_norm and HF attention infer widths from the weights), so a member missing from a
    group fails with a shape error or a different output.
    """
    assert groups_, "no group found: removing nothing would compare the model with itself"
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    drops = {}
    for g in groups_:
        for m in g.members:
            run = g.channels // g.pools  # pools: an equal count from each run
            drop = {0, g.channels - 1} if g.pools == 1 and g.channels > 2 else set(range(0, g.channels, run))
            for c in drop:
                start = m.offset + c * m.unit
                drops.setdefault((m.name, m.dim, m.buffer), set()).update(range(start, start + m.unit))
    masked, removed = dict(params), {**params, **buffers}
    for (name, dim, buffer), idx in drops.items():
        t = (buffers if buffer else params)[name]
        keep = torch.tensor([i for i in range(t.shape[dim]) if i not in idx], dtype=torch.long)
        removed[name] = removed[name].index_select(dim, keep)  # a param may shrink along two dims
        if not buffer:
            mask = torch.ones(t.shape[dim], dtype=torch.bool)
            mask[sorted(idx)] = False
            shape = [1] * t.dim()
            shape[dim] = -1
            masked[name] = masked[name] * mask.view(shape)
    with torch.no_grad():
        want = torch.func.functional_call(model, {**masked, **buffers}, args, kwargs)
        got = torch.func.functional_call(model, removed, args, kwargs)
    if not isinstance(want, torch.Tensor):
        want, got = want[0], got[0]
    torch.testing.assert_close(got, want, atol=atol, rtol=1e-4)


@pytest.mark.parametrize(
    "make,x",
    [
        (ResidualMLP, torch.randn(2, 8)),
        (Concat, torch.randn(1, 3, 8, 8)),
        (TiedLM, torch.randint(0, 50, (1, 7))),
    ],
)
def test_removing_a_groups_channels_equals_zeroing_them(make, x):
    torch.manual_seed(0)
    model = make().eval()
    if isinstance(model, Concat):  # non-trivial BN statistics
        model.bn.running_mean.uniform_(-1, 1), model.bn.running_var.uniform_(0.5, 2)
    report = group_report(model, (x,))
    removed_equals_masked(model, (x,), {}, report.groups)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "densenet121", "regnet_x_400mf"])
def test_torchvision_removal_equals_masking(name):
    # (models with depthwise convs need the conv's `groups` changed: that is shrink's job)
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    x = torch.randn(1, 3, 64, 64)
    removed_equals_masked(model, (x,), {}, groups(model, (x,)), atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_transformer_heads_and_mlp_removal_equals_masking(name):
    model, kw = _hf(name)
    model.eval()
    ids = torch.randint(0, 100, (1, 8))
    removed_equals_masked(model, (ids,), kw, groups(model, (ids,), kw))


class _SumOfSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        return self.o(y) + torch.sigmoid(y).sum(1, keepdim=True)


class _Bilinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(5, 2)

    def forward(self, x):  # (N, 8) @ (8, N): two activations contracted over 8 channels
        return self.o(torch.sigmoid(self.a(x)) @ torch.sigmoid(self.b(x)).T)


def test_a_sum_or_an_activation_product_over_channels_is_inexact():
    model = _SumOfSigmoid()
    report = group_report(model, (torch.randn(1, 3, 4, 4),))
    check_report(model, report)
    g = by_producer(report, "a.weight")
    assert g in report.inexact and "sum across channels" in g.reason and "submodule <top level>" in g.reason
    model = _Bilinear()
    report = group_report(model, (torch.randn(5, 4),))
    check_report(model, report)
    g = by_producer(report, "a.weight")
    assert g in report.inexact and "of two activations across channels" in g.reason


class _SplitSizes(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 5, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        p, q = torch.split(self.a(x), [3, 5], 1)
        return self.c(q * self.b(x)) + p.sum(1, keepdim=True)


class _Chunked(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c, self.d = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, 1)
        return self.c(F.relu(p)) + self.d(F.relu(q))


def test_a_split_along_channels_pins_parts_the_forward_sizes():
    x = torch.randn(2, 3, 4, 4)
    model = _SplitSizes()
    report = group_report(model, (x,))
    check_report(model, report)
    assert all(("a.weight", 0) not in pairs([g]) for g in report.groups + report.inexact)
    assert any("split_with_sizes along a channel dim" in g.reason for g in report.excluded)
    model = _Chunked()  # two equal halves pruned apart would break chunk(2)
    report = group_report(model, (x,))
    check_report(model, report)
    assert all(("a.weight", 0) not in pairs([g]) for g in report.groups + report.inexact)
    assert any("into equal parts that are not pruned as one channel space" in g.reason for g in report.excluded)


def test_a_depthwise_conv_on_the_model_input_is_excluded():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    report = group_report(model, (torch.randn(2, 4, 6, 6),))
    check_report(model, report)
    g = by_producer(report, "0.weight")
    assert g in report.excluded and "depthwise conv whose input channels cannot be pruned" in g.reason
    assert not report.groups and not report.inexact


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.o = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if y.sum() > 0:
            y = y * 2
        return self.o(y)


def test_a_trace_failure_is_not_implemented_naming_the_model():
    with pytest.raises(NotImplementedError, match=r"could not trace the model .*_DataDependent") as info:
        group_report(_DataDependent(), (torch.randn(2, 3, 4, 4),))
    assert info.value.__cause__ is not None
    with pytest.raises(NotImplementedError, match="could not trace the model"):
        groups(_DataDependent(), (torch.randn(2, 3, 4, 4),))
