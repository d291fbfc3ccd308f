"""Every model of the list, end to end through traced groups.

For each model (torchvision with ``weights=None``; transformers small random configs; custom
``nn.MultiheadAttention`` and weight-tied models): ``groups`` (one trace per model) ->
``prune_groups(..., 0.5)`` -> ``shrink(check=True)``, then

(a) the shrunk output equals ``fp.functional_call(model, params, args, masks=masks)``,
(b) every parameter's shrunk shape (hence the parameter count) is the one predicted from
    ``kept_channels`` (each member loses its removed channels' slices along its dim),
(c) FLOPs (``FlopCounterMode``): the masked model costs what the dense one does, the shrunk one
    less; every conv/linear layer costs its dense FLOPs scaled by its predicted weight size (its
    in/out widths; spatial sizes do not change), and for models without attention the rest of the
    FLOPs are unchanged, so the total is predicted exactly,
(d) the shrunk ``state_dict`` loads into ``shrink_to(fresh model, kept_channels(masks, groups))``
    and that model gives the same outputs,
(e) ``torch.func.functional_call`` on the shrunk model gives its outputs.

Run with ``-s`` to print the per-model table quoted in docs/structural.md.
"""

import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import funcprune as fp
from funcprune.structural import group_report, kept_channels, prune_groups, shrink, shrink_to

tv = pytest.importorskip("torchvision")
transformers = pytest.importorskip("transformers")


def _randomize_bn(model):
    """Non-trivial BN statistics and shifts: a zeroed channel's BN output would be its shift."""
    for sub in model.modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.running_mean is not None:
            with torch.no_grad():
                sub.running_mean.uniform_(-1, 1)
                sub.running_var.uniform_(0.5, 2)
                if sub.affine:
                    sub.weight.uniform_(0.5, 1.5)
                    sub.bias.uniform_(-1, 1)
    return model.eval()


class TiedLM(nn.Module):
    """Embedding -> residual MLP -> LM head sharing the embedding's weight (weight tying)."""

    def __init__(self, vocab=50, width=16, inner=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h)


class MHANet(nn.Module):
    """nn.MultiheadAttention (packed in_proj_weight) between two linears."""

    def __init__(self, width=32, heads=4):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.att = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.att(h, h, h, need_weights=False)
        return self.out(a)


def _nonzero(model):
    """Zero-initialized params (ViT's head, biases) get small random values: outputs are not
    trivially zero and every bias carries a constant through the pruned channels; ConvNeXt's
    layer scales (1e-6 at init) get values near 1, so its residual branches count."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.uniform_(0.5, 1.5)
            elif not p.any():
                p.normal_(0, 0.02)
    return model


def _tv(name, size=32, **kw):
    def build():
        model = _randomize_bn(_nonzero(getattr(tv.models, name)(weights=None, **kw)))
        return model, (torch.randn(1, 3, size, size),), {}

    return build


def _hf(kind):
    def build():
        T = transformers
        if kind == "bert":
            model = T.BertModel(
                T.BertConfig(
                    hidden_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    intermediate_size=128,
                    vocab_size=100,
                    max_position_embeddings=32,
                )
            )
            kwargs = {}
        elif kind == "gpt2":
            model = T.GPT2LMHeadModel(
                T.GPT2Config(
                    n_embd=64, n_layer=2, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
                )
            )
            kwargs = {"use_cache": False}
        else:  # grouped-query attention: 4 query heads, 2 key/value heads
            model = T.LlamaForCausalLM(
                T.LlamaConfig(
                    hidden_size=64,
                    num_hidden_layers=2,
                    num_attention_heads=4,
                    num_key_value_heads=2,
                    intermediate_size=128,
                    vocab_size=100,
                    max_position_embeddings=32,
                )
            )
            kwargs = {"use_cache": False}
        return _nonzero(model).eval(), (torch.randint(0, 100, (1, 8)),), kwargs

    return build


def _custom(cls, x):
    def build():
        return _nonzero(cls()).eval(), (x(),), {}

    return build


# name -> builder (model in eval mode, args, kwargs); inputs are the smallest each model takes
MODELS = {
    "resnet18": _tv("resnet18"),
    "resnet50": _tv("resnet50"),
    "vgg11_bn": _tv("vgg11_bn"),
    "mobilenet_v2": _tv("mobilenet_v2"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "densenet121": _tv("densenet121"),
    "efficientnet_b0": _tv("efficientnet_b0"),
    "convnext_tiny": _tv("convnext_tiny"),
    "regnet_x_400mf": _tv("regnet_x_400mf"),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "vit_b_16": _tv("vit_b_16", image_size=32),  # ViT-B/16 itself, on 32x32 images (2x2 patches)
    "bert": _hf("bert"),
    "gpt2": _hf("gpt2"),
    "llama_gqa": _hf("llama"),
    "multihead_attention": _custom(MHANet, lambda: torch.randn(1, 5, 8)),  # batch 1 (see docs)
    "tied_embedding_head": _custom(TiedLM, lambda: torch.randint(0, 50, (1, 7))),
}
LOCAL = {"resnet18", "llama_gqa"}  # also pruned with scope="local"
CASES = [(n, "global") for n in MODELS] + [(n, "local") for n in sorted(LOCAL)]
ATTENTION = {"vit_b_16", "bert", "gpt2", "llama_gqa", "multihead_attention"}


def _outputs(out):
    if isinstance(out, dict):  # transformers' ModelOutput
        out = list(out.values())
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _max_diff(ref, got):
    a, b = _outputs(ref), _outputs(got)
    assert len(a) == len(b) and a, (len(a), len(b))
    assert max(float(x.abs().max()) for x in a) > 0, "the masked model's outputs are all zero"
    worst = 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape, (x.shape, y.shape)
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5 * max(1.0, float(x.abs().max())))
        worst = max(worst, float((y.double() - x.double()).abs().max()))
    return worst


def _predicted_shapes(model, kept):
    """Each param's shape after removing, along every member dim, the slices of the removed channels."""
    removed = {}
    for entry in kept:
        gone = sorted(set(range(entry["channels"])) - set(entry["kept"]))
        for name, dim, offset, unit, buffer in entry["members"]:
            if buffer:
                continue
            idx = removed.setdefault((name, dim), set())
            for c in gone:
                idx.update(range(offset + c * unit, offset + (c + 1) * unit))
    shapes = {}
    for name, p in model.named_parameters():
        shapes[name] = tuple(n - len(removed.get((name, d), ())) for d, n in enumerate(p.shape))
    return shapes


_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_layer(sub):
    return isinstance(sub, _LAYERS) or type(sub).__name__ == "Conv1D"  # transformers' GPT-2 Conv1D


def _flops(fn):
    # with grad enabled: under no_grad nn.MultiheadAttention takes its fused fast path
    # (torch._native_multi_head_attention), which FlopCounterMode does not count
    with FlopCounterMode(display=False) as counter:
        fn()
    per = {}
    for key, ops in counter.get_flop_counts().items():
        if key != "Global":  # "Root.sub.layer" -> "sub.layer"
            per[key.partition(".")[2]] = sum(ops.values())
    return counter.get_total_flops(), per


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("name,scope", CASES)
def test_model_groups_shrink_equal_masked_params_and_flops_as_predicted(name, scope):
    torch.manual_seed(0)
    model, args, kwargs = MODELS[name]()
    report = group_report(model, args, kwargs)  # the one trace of this model
    gs = list(report.groups)
    assert gs, f"{name}: no prunable group"
    params = dict(model.named_parameters())
    masks = prune_groups(params, gs, 0.5, scope=scope)
    small = shrink(model, masks, args, groups=gs, kwargs=kwargs, check=True).eval()

    # (a) outputs equal the masked model's (asserted here too, not only by shrink's check)
    with torch.no_grad():
        masked_out = fp.functional_call(model, params, args, kwargs, masks=masks)
        small_out = small(*args, **kwargs)
    diff = _max_diff(masked_out, small_out)

    # (b) every param's shape, hence the count, as predicted from the kept channels
    kept = kept_channels(masks, gs)
    assert any(len(e["kept"]) < e["channels"] for e in kept), f"{name}: nothing pruned"
    want = _predicted_shapes(model, kept)
    got = {n: tuple(p.shape) for n, p in small.named_parameters()}
    assert got == want
    dense_params, small_params = _params(model), _params(small)
    assert small_params == sum(math.prod(s) for s in want.values()) < dense_params

    # (c) FLOPs: masked == dense > shrunk; conv/linear layers scale with their kept in/out widths
    dense_flops, dense_per = _flops(lambda: model(*args, **kwargs))
    masked_flops, _ = _flops(lambda: fp.functional_call(model, params, args, kwargs, masks=masks))
    small_flops, small_per = _flops(lambda: small(*args, **kwargs))
    assert masked_flops == dense_flops > small_flops > 0
    dense_mods = dict(model.named_modules())
    layer_dense = layer_small = 0
    checked = 0
    for path, sub in small.named_modules():
        if not _is_layer(sub) or path not in dense_per:
            continue
        w = path + ".weight"
        dense_w = dense_mods[path].weight
        if w not in want:  # a tied weight is named once (by its first owner)
            w = next(n for n, p in model.named_parameters() if p is dense_w)
        assert dense_per[path] % dense_w.numel() == 0, path  # 2 * positions per weight entry
        predicted = dense_per[path] // dense_w.numel() * math.prod(want[w])
        assert small_per[path] == predicted, (path, small_per[path], predicted)
        layer_dense += dense_per[path]
        layer_small += small_per[path]
        checked += 1
    assert checked and layer_small < layer_dense
    rest_dense, rest_small = dense_flops - layer_dense, small_flops - layer_small
    if name in ATTENTION:  # attention products shrink with the kept heads (not predicted here)
        assert rest_small <= rest_dense
    else:  # all FLOPs are in the conv/linear layers' ops: the total is predicted exactly
        assert rest_small == rest_dense

    # (d) the state_dict loads into shrink_to(a freshly built model, kept channels)
    torch.manual_seed(1)
    fresh, _, _ = MODELS[name]()
    rebuilt = shrink_to(fresh, kept).eval()
    rebuilt.load_state_dict(small.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_outputs(rebuilt(*args, **kwargs)), _outputs(small_out), rtol=0, atol=0)

    # (e) torch.func.functional_call on the shrunk model
    state = {**dict(small.named_parameters()), **dict(small.named_buffers())}
    with torch.no_grad():
        torch.testing.assert_close(
            _outputs(torch.func.functional_call(small, state, args, kwargs)), _outputs(small_out), rtol=0, atol=0
        )

    print(
        f"\n| {name} ({scope}) | {len(report.groups)} | {len(report.inexact)} | {len(report.excluded)} | "
        f"{dense_params:,} -> {small_params:,} ({small_params / dense_params:.3f}) | "
        f"{dense_flops:,} -> {small_flops:,} ({small_flops / dense_flops:.3f}) | {diff:.2e} |"
    )
