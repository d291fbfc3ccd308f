"""shrink never returns a model that cannot run or differs unnoticed; bad arguments get clear errors.

The oracle is the masked model: funcprune.functional_call(module, params, args, masks=masks).
"""

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import funcprune as fp
from funcprune.structural import Group, group_report, groups, kept_channels, prune_groups, shrink, shrink_to
from funcprune.structural import Member as M


def masked_output(model, masks, args):
    with torch.no_grad():
        return fp.functional_call(model, dict(model.named_parameters()), args, masks=masks)


# --- a shrunk model that cannot run is an error -------------------------------------------------
class PlainNorm(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.a, self.norm, self.c = nn.Linear(4, 8), norm, nn.Linear(8, 2)

    def forward(self, x):
        return self.c(self.norm(self.a(x)))


class CustomLayerNorm(nn.Module):
    """A norm matched by its class name, reading its own normalized_shape in forward."""

    def __init__(self, n):
        super().__init__()
        self.normalized_shape, self.weight = (n,), nn.Parameter(torch.ones(n))

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight)


@pytest.mark.parametrize(
    "norm",
    [nn.LayerNorm(8, elementwise_affine=False), nn.RMSNorm(8, elementwise_affine=False)],
    ids=["layernorm", "rmsnorm"],
)
def test_a_norm_without_affine_weight_excludes_its_channels_and_a_shrink_through_it_raises(norm):
    model = PlainNorm(norm).eval()
    x = torch.randn(3, 4)
    report = group_report(model, (x,))
    assert not report.groups and not report.inexact
    assert any("without an affine weight" in g.reason for g in report.excluded)
    g = Group(8, (M("a.weight", 0), M("a.bias", 0), M("c.weight", 1)), exact=False)  # written by hand
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5, include_inexact=True)
    with pytest.raises(ValueError, match="cannot run on the example inputs"):
        shrink(model, masks, (x,), groups=[g])


def test_a_norm_matched_by_name_gets_its_normalized_shape_and_runs():
    model = PlainNorm(CustomLayerNorm(8)).eval()
    x = torch.randn(3, 4)
    (g,) = groups(model, (x,), inexact=True)
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5, include_inexact=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = shrink(model, masks, (x,), groups=[g])
    assert small.norm.normalized_shape == (4,) and small(x).shape == (3, 2)
    assert any("as expected for the inexact group" in str(w.message) for w in caught)


# --- the check compares what is inside the output ---------------------------------------------
@dataclasses.dataclass
class Out:
    logits: torch.Tensor
    extra: dict


class DataclassOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        return Out(self.l2(torch.sigmoid(self.l1(x))), {"n": 1})


SIGMOID_GROUP = [Group(8, (M("l1.weight", 0), M("l1.bias", 0), M("l2.weight", 1)))]


def test_the_check_looks_inside_a_dataclass_output():
    model = DataclassOut().eval()
    x = torch.randn(4, 5)
    masks = prune_groups(dict(model.named_parameters()), SIGMOID_GROUP, 0.5)
    producer = {"l1.weight": masks["l1.weight"], "l1.bias": masks["l1.bias"]}  # sigmoid(0) = 0.5 flows on
    with pytest.raises(ValueError, match=r"output\['logits'\] differs by up to"):
        shrink(model, producer, (x,), groups=SIGMOID_GROUP)
    small = shrink(model, masks, (x,), groups=SIGMOID_GROUP)
    torch.testing.assert_close(small(x).logits, masked_output(model, masks, (x,)).logits)


class Opaque:
    __slots__ = ("t",)  # no __dict__ to look inside

    def __init__(self, t):
        self.t = t


def test_an_output_the_check_cannot_look_inside_is_refused():
    class M_(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(5, 8), nn.Linear(8, 3)

        def forward(self, x):
            return Opaque(self.l2(self.l1(x)))

    model = M_().eval()
    masks = prune_groups(dict(model.named_parameters()), SIGMOID_GROUP, 0.5)
    with pytest.raises(ValueError, match=r"cannot compare output of type .*Opaque.*check=False"):
        shrink(model, masks, (torch.randn(4, 5),), groups=SIGMOID_GROUP)
    shrink(model, masks, (torch.randn(4, 5),), groups=SIGMOID_GROUP, check=False)


def test_the_tolerance_is_relative_to_the_output_scale():
    # outputs around 1e-6: a 14% error must not pass as "within atol"
    model = nn.Sequential(nn.Linear(5, 8), nn.Sigmoid(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_(1e-6)
        model[2].bias.mul_(1e-6)
    g = [Group(8, (M("0.weight", 0), M("0.bias", 0), M("2.weight", 1)))]
    masks = prune_groups(dict(model.named_parameters()), g, 0.5)
    producer = {"0.weight": masks["0.weight"], "0.bias": masks["0.bias"]}
    x = torch.randn(4, 5)
    small = shrink(model, producer, (x,), groups=g, check=False)
    want = masked_output(model, producer, (x,))
    assert want.abs().max() < 1e-5 and (small(x) - want).abs().max() > 1e-2 * want.abs().max()
    with pytest.raises(ValueError, match="differs by up to"):
        shrink(model, producer, (x,), groups=g)


# --- hard-coded slices and tensor bounds --------------------------------------------------------
class HalfSlices(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(h[:, :4] * torch.relu(h[:, 4:]) + self.b(x))


def test_slices_with_fixed_bounds_are_barriers():
    report = group_report(HalfSlices(), (torch.randn(3, 4),))
    assert not report.groups
    assert sum("a slice of channels with fixed bounds" in g.reason for g in report.excluded) == 2


class ClampByTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.c(torch.clamp(self.a(x), min=self.b(x)))


def test_clamp_by_a_tensor_joins_the_bound_s_channels_and_shrinks_exactly():
    model = ClampByTensor().eval()
    x = torch.randn(3, 4)
    (g,) = groups(model, (x,))
    assert {m.name for m in g.members} >= {"a.weight", "b.weight", "c.weight"}
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5)
    small = shrink(model, masks, (x,), groups=[g], check=False)
    torch.testing.assert_close(small(x), masked_output(model, masks, (x,)))


# --- a per-head attention bias ------------------------------------------------------------------
class HeadBias(nn.Module):
    """Attention with a per-head (H, L, L) bias, given directly or gathered from a (T, H) table."""

    def __init__(self, gather):
        super().__init__()
        self.gather = gather
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.table = nn.Parameter(torch.randn(9, 4))
        self.register_buffer("index", torch.randint(0, 9, (25,)))
        self.bias = nn.Parameter(torch.randn(4, 5, 5))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, -1, 2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1) if self.gather else self.bias
        return self.o(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("gather", [False, True], ids=["bias", "table"])
def test_a_per_head_attention_bias_is_a_member_of_the_heads_group(gather):
    from funcprune.structural import register_resizer

    register_resizer(HeadBias, lambda module, path: None)  # its forward reads the head count from the shapes
    model = HeadBias(gather).eval()
    x = torch.randn(2, 5, 8)
    (g,) = groups(model, (x,))
    assert g.kind == "heads" and g.channels == 4
    assert (M("table", 1) if gather else M("bias", 0)) in g.members
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5)
    small = shrink(model, masks, (x,), groups=[g])
    assert (small.table if gather else small.bias).shape[1 if gather else 0] == 2
    torch.testing.assert_close(small(x), masked_output(model, masks, (x,)))


@pytest.mark.slow
def test_hf_swin_relative_position_bias_joins_its_heads_and_shrinks():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, mlp_ratio=2.0
    )
    model = T.SwinModel(cfg).eval()
    x = torch.randn(1, 3, 32, 32)
    gs = groups(model, (x,))
    heads = [g for g in gs if g.kind == "heads"]
    assert len(heads) == 4 and all(
        any(m.name.endswith("relative_position_bias_table") for m in g.members) for g in heads
    )
    masks = prune_groups(dict(model.named_parameters()), gs, 0.5)
    small = shrink(model, masks, (x,), groups=gs)  # checked against the masked model
    assert small.encoder.layers[1].blocks[0].attention.num_attention_heads == 2


# --- branches only train mode runs ---------------------------------------------------------------
class TrainOnlyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.aux = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            return self.b(h), self.aux(h)
        return self.b(h)


def test_a_branch_only_train_mode_runs_is_traced_and_sliced():
    model = TrainOnlyHead()
    x = torch.randn(3, 4)
    (g,) = groups(model, (x,))
    assert M("aux.weight", 1) in g.members and model.training
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5)
    small = shrink(model, masks, (x,), groups=[g])
    assert small.training
    with torch.no_grad():
        want = fp.functional_call(model, dict(model.named_parameters()), (x,), masks=masks)
        got = small(x)
    torch.testing.assert_close(got, want)


@pytest.mark.slow
def test_inception_v3_aux_head_is_sliced_and_the_shrunk_model_trains():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    x = torch.randn(2, 3, 299, 299)
    gs = groups(model, (x,))
    assert any(m.name == "AuxLogits.conv0.conv.weight" and m.dim == 1 for g in gs for m in g.members)
    masks = prune_groups(dict(model.named_parameters()), gs, 0.5)
    small = shrink(model, masks, (x,), groups=gs).train()
    out = small(x)
    out.logits.sum().backward()
    assert out.aux_logits.shape == (2, 1000)


# --- argument types -------------------------------------------------------------------------------
SIMPLE = [Group(8, (M("0.weight", 0), M("0.bias", 0), M("2.weight", 1)))]


def _simple():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def test_wrong_argument_types_raise_clear_errors_before_anything():
    model = _simple()
    masks = prune_groups(dict(model.named_parameters()), SIMPLE, 0.5)
    with pytest.raises(TypeError, match="params must be a tree of tensors.*got the module Sequential"):
        prune_groups(model, SIMPLE, 0.5)
    with pytest.raises(TypeError, match="masks must be a tree of tensors.*got the module Sequential"):
        shrink(model, model, (torch.randn(2, 4),), groups=SIMPLE)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got dict"):
        groups(dict(model.named_parameters()), (torch.randn(2, 4),))
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got dict"):
        shrink(dict(model.named_parameters()), masks, (torch.randn(2, 4),), groups=SIMPLE)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        groups(model, (torch.randn(2, 4),), [1])


def test_shrink_to_an_unknown_member_raises_value_error():
    model = _simple()
    kept = kept_channels(prune_groups(dict(model.named_parameters()), SIMPLE, 0.5), SIMPLE)
    kept[0]["members"].append(["nope.weight", 0, 0, 1, False])
    with pytest.raises(ValueError, match="member 'nope.weight'"):
        shrink_to(model, kept)


def test_meta_masks_and_meta_modules_are_refused_clearly():
    model = _simple()
    masks = prune_groups(dict(model.named_parameters()), SIMPLE, 0.5)
    meta_masks = {k: v.to("meta") for k, v in masks.items()}
    with pytest.raises(ValueError, match="on the meta device"):
        shrink(model, meta_masks, (torch.randn(2, 4),), groups=SIMPLE)
    meta = _simple().to("meta")
    with pytest.raises(ValueError, match="on the meta device: pass values with params= or check=False"):
        shrink(meta, masks, (torch.randn(2, 4),), groups=SIMPLE)
    small = shrink(meta, masks, (torch.randn(2, 4),), groups=SIMPLE, check=False)
    assert small[0].weight.is_meta and small[0].out_features == 4


class TakesAList(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, xs):
        return self.c(torch.relu(self.a(xs[0] + xs[1])))


def test_groups_and_shrink_read_args_by_one_rule_a_tuple_or_the_one_argument():
    model = TakesAList().eval()
    xs = [torch.randn(3, 4), torch.randn(3, 4)]
    (g,) = groups(model, xs)  # a list is the one argument, as functional_call takes it
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5)
    small = shrink(model, masks, xs, groups=[g])
    torch.testing.assert_close(small(xs), masked_output(model, masks, (xs,)))
    assert groups(model, (xs,)) == [g]


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        x.mul_(2)
        return self.c(torch.relu(self.a(x)))


def test_a_forward_that_writes_its_input_leaves_the_caller_s_tensors_and_the_check_intact():
    model = InPlace().eval()
    x = torch.randn(3, 4)
    before = x.clone()
    (g,) = groups(model, (x,))
    masks = prune_groups(dict(model.named_parameters()), [g], 0.5)
    shrink(model, masks, (x,), groups=[g])  # the check passes: each run gets its own copy
    shrink(model, masks, (x,))  # traced too
    assert torch.equal(x, before)


def test_old_keyword_names_still_work_with_a_deprecation_warning():
    model = _simple()
    x = torch.randn(2, 4)
    with pytest.warns(DeprecationWarning, match="example_args= is renamed args="):
        gs = groups(model, example_args=(x,))
    with pytest.warns(DeprecationWarning, match="example_kwargs= is renamed kwargs="):
        assert groups(model, (x,), example_kwargs={}) == gs
    masks = prune_groups(dict(model.named_parameters()), gs, 0.5)
    with pytest.warns(DeprecationWarning, match="example_args= is renamed args="):
        small = shrink(model, masks, example_args=(x,), groups=gs)
    assert small[0].out_features == 4
    with pytest.raises(TypeError, match="got both args= and its old name example_args="):
        shrink(model, masks, (x,), example_args=(x,))


# --- masks made per tensor ------------------------------------------------------------------------
class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.c2(torch.relu(self.b1(self.c1(x)))).mean((2, 3))


def test_shrink_on_ln_structured_masks_says_why_and_points_at_prune_groups():
    torch.manual_seed(0)
    model = ConvBN().eval()
    with torch.no_grad():
        model.b1.bias.uniform_(-1, 1)
    params = dict(model.named_parameters())
    masks = fp.prune(params, fp.ln_structured, 0.5, n=2, dim=0, include=["c1.weight"])
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(
        ValueError,
        match=r"(?s)BatchNorm's shift.*members without a mask: group 0 .*'b1.bias'.*"
        r"funcprune.structural.prune_groups",
    ):
        shrink(model, masks, (x,))
