"""prune_groups (group masks) and shrink (a smaller dense model with the masked model's outputs).

Groups are written by hand here, so these tests do not depend on the tracer.
"""

import json

import pytest
import torch
import torch.nn as nn

import funcprune as fp
from funcprune.structural import Group, group_importance, kept_channels, prune_groups, shrink, shrink_to
from funcprune.structural import Member as M

torch.manual_seed(0)


def _bn(prefix):
    return [
        M(prefix + ".weight", 0),
        M(prefix + ".bias", 0),
        M(prefix + ".running_mean", 0, buffer=True),
        M(prefix + ".running_var", 0, buffer=True),
    ]


def _randomize_bn(model):
    for sub in model.modules():
        if isinstance(sub, nn.modules.batchnorm._NormBase):
            with torch.no_grad():
                sub.running_mean.uniform_(-1, 1)
                sub.running_var.uniform_(0.5, 2)
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.uniform_(-1, 1)  # a zeroed channel's BN output would be this shift
    return model.eval()


class ConvBN(nn.Module):
    """conv -> BN -> relu -> conv -> BN -> relu -> pool -> linear: the BN-shift case."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))

    GROUPS = [
        Group(8, (M("c1.weight", 0), M("c1.bias", 0), *_bn("b1"), M("c2.weight", 1))),
        Group(6, (M("c2.weight", 0), M("c2.bias", 0), *_bn("b2"), M("fc.weight", 1))),
    ]
    X = (torch.randn(2, 3, 8, 8),)


class SigmoidMLP(nn.Module):
    """A bias through sigmoid: a zeroed channel carries sigmoid(0) = 0.5 downstream."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(torch.sigmoid(self.l1(x)))

    GROUPS = [Group(8, (M("l1.weight", 0), M("l1.bias", 0), M("l2.weight", 1)))]
    X = (torch.randn(4, 5),)


class Residual(nn.Module):
    """A residual block: both branches of the add lose the same channels; the inner width on its own."""

    def __init__(self):
        super().__init__()
        self.stem, self.bs = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.a, self.ba = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.b, self.bb = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bs(self.stem(x)))
        y = self.bb(self.b(torch.relu(self.ba(self.a(x)))))
        return self.fc(torch.relu(x + y).mean((2, 3)))

    GROUPS = [
        Group(
            8,
            (
                M("stem.weight", 0),
                M("stem.bias", 0),
                *_bn("bs"),
                M("a.weight", 1),
                M("b.weight", 0),
                M("b.bias", 0),
                *_bn("bb"),
                M("fc.weight", 1),
            ),
            kind="residual",
        ),
        Group(4, (M("a.weight", 0), M("a.bias", 0), *_bn("ba"), M("b.weight", 1))),
    ]
    X = (torch.randn(2, 3, 6, 6),)


class Concat(nn.Module):
    """Two branches concatenated: each is a group, the consumer's input at an offset."""

    def __init__(self):
        super().__init__()
        self.p, self.q = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1)
        self.r = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5 * 4 * 4, 2)  # a flatten: the group's channels own H*W entries each

    def forward(self, x):
        y = torch.cat([torch.tanh(self.p(x)), torch.sigmoid(self.q(x))], dim=1)
        return self.fc(torch.relu(self.r(y)).flatten(1))

    GROUPS = [
        Group(4, (M("p.weight", 0), M("p.bias", 0), M("r.weight", 1, offset=0))),
        Group(6, (M("q.weight", 0), M("q.bias", 0), M("r.weight", 1, offset=4))),
        Group(5, (M("r.weight", 0), M("r.bias", 0), M("fc.weight", 1, unit=16))),
    ]
    X = (torch.randn(2, 3, 4, 4),)


class Depthwise(nn.Module):
    """conv -> BN -> depthwise conv -> BN -> pointwise, then a grouped conv pruned per pool."""

    def __init__(self):
        super().__init__()
        self.c, self.bc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bd = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.g = nn.Conv2d(8, 8, 1, groups=2)  # its input channels form no slice: not prunable
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bc(self.c(x)))
        x = torch.relu(self.bd(self.dw(x)))
        x = torch.relu(self.g(torch.relu(self.pw(x))))
        return self.fc(x.mean((2, 3)))

    GROUPS = [
        Group(
            8,
            (
                M("c.weight", 0),
                M("c.bias", 0),
                *_bn("bc"),
                M("dw.weight", 0),
                M("dw.bias", 0),
                *_bn("bd"),
                M("pw.weight", 1),
            ),
        ),
        Group(8, (M("g.weight", 0), M("g.bias", 0), M("fc.weight", 1)), pools=2),
    ]
    X = (torch.randn(2, 3, 5, 5),)


class MHA(nn.Module):
    """nn.MultiheadAttention: whole heads, and its embedding width pruned by the same count."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])

    GROUPS = [
        Group(
            4,
            (
                M("attn.in_proj_weight", 0, 0, 4),
                M("attn.in_proj_weight", 0, 16, 4),
                M("attn.in_proj_weight", 0, 32, 4),
                M("attn.in_proj_bias", 0, 0, 4),
                M("attn.in_proj_bias", 0, 16, 4),
                M("attn.in_proj_bias", 0, 32, 4),
                M("attn.out_proj.weight", 1, 0, 4),
            ),
            kind="heads",
        ),
        Group(
            16,
            (
                M("inp.weight", 0),
                M("inp.bias", 0),
                M("attn.in_proj_weight", 1),
                M("attn.out_proj.weight", 0),
                M("attn.out_proj.bias", 0),
                M("out.weight", 1),
            ),
            kind="residual",
        ),
    ]
    X = (torch.randn(2, 5, 6),)


class Transposed(nn.Module):
    """A transposed conv (weight (in, out, ...)), a per-channel PReLU and a 1-D conv on the way."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.PReLU(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.c1d = nn.Conv1d(6, 4, 3)

    def forward(self, x):
        y = torch.relu(self.up(self.act(self.c(x))))
        return self.c1d(y.mean(2))

    GROUPS = [
        Group(8, (M("c.weight", 0), M("c.bias", 0), M("act.weight", 0), M("up.weight", 0))),
        Group(6, (M("up.weight", 1), M("up.bias", 0), M("c1d.weight", 1))),
    ]
    X = (torch.randn(2, 3, 4, 4),)


class LayerNormed(nn.Module):
    """A LayerNorm across the pruned channels: removing differs from zeroing (an inexact group)."""

    def __init__(self):
        super().__init__()
        self.l1, self.ln, self.l2 = nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(self.ln(self.l1(x)))

    GROUPS = [
        Group(
            8,
            (M("l1.weight", 0), M("l1.bias", 0), M("ln.weight", 0), M("ln.bias", 0), M("l2.weight", 1)),
            exact=False,
            reason="LayerNorm ln normalizes across these channels",
        )
    ]
    X = (torch.randn(4, 5),)


EXACT = [ConvBN, SigmoidMLP, Residual, Concat, Depthwise, MHA, Transposed]


def _model(cls):
    torch.manual_seed(1)
    return _randomize_bn(cls())


def _params(model):
    return {name: p.detach() for name, p in model.named_parameters()}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


CASES = [(cls, scope) for cls in EXACT for scope in ("local", "global")]


@pytest.mark.parametrize("cls,scope", CASES, ids=[f"{c.__name__}-{s}" for c, s in CASES])
def test_shrunk_outputs_equal_the_masked_model(cls, scope):
    model = _model(cls)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = _params(model)
    amount = 0.25 if cls is MHA else 0.5
    masks = prune_groups(params, cls.GROUPS, amount, scope=scope)
    small = shrink(model, masks, cls.X, groups=cls.GROUPS)  # check=True: raises on a mismatch
    ref = fp.functional_call(model, params, cls.X, masks=masks)
    torch.testing.assert_close(small(*cls.X), ref, rtol=1e-5, atol=1e-6)
    # the original is untouched; the copy is smaller by exactly the pruned channels' parameters
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    removed = sum(int((~masks[name]).sum()) for name in masks if _is_whole_channel_member(cls, name))
    assert _n_params(small) == _n_params(model) - removed
    assert _n_params(small) < _n_params(model)


def _is_whole_channel_member(cls, name):
    return any(m.name == name for g in cls.GROUPS for m in g.members)


def test_bn_shift_needs_the_bn_affine_masked():
    # Without masking BN's bias a zeroed conv channel would output the BN shift: prune_groups masks
    # every member (BN affine and the consumer's input slice), so zeroed == removed.
    model = _model(ConvBN)
    params = _params(model)
    masks = prune_groups(params, ConvBN.GROUPS[:1], 0.5)
    gone = ~masks["c1.bias"]
    assert not bool(masks["b1.bias"][gone].any()) and not bool(masks["c2.weight"][:, gone].any())
    # masks on the producer alone: the zeroed channels output BN's shift, which flows on
    producer = {"c1.weight": masks["c1.weight"], "c1.bias": masks["c1.bias"]}
    zeroed = fp.functional_call(model, params, ConvBN.X, masks=producer)
    full = fp.functional_call(model, params, ConvBN.X, masks=masks)
    assert not torch.allclose(zeroed, full, atol=1e-3)
    # shrink removes those channels (their BN shift too): the check refuses to call that the masked model
    with pytest.raises(ValueError, match=r"group 0 \(channels, 8 channels\): output differs by up to"):
        shrink(model, producer, ConvBN.X, groups=ConvBN.GROUPS)
    small = shrink(model, producer, ConvBN.X, groups=ConvBN.GROUPS, check=False)
    torch.testing.assert_close(small(*ConvBN.X), full, rtol=1e-5, atol=1e-6)


def test_the_check_names_the_group_and_the_difference():
    model = _model(SigmoidMLP)
    params = _params(model)
    # a bias through sigmoid: with the consumer's input slice unmasked, a zeroed channel still sends
    # sigmoid(0) = 0.5 on; shrink removes it, and the check says which group and by how much
    masks = prune_groups(params, SigmoidMLP.GROUPS, 0.5)
    producer = {"l1.weight": masks["l1.weight"], "l1.bias": masks["l1.bias"]}
    with pytest.raises(
        ValueError,
        match=r"group 0 \(channels, 8 channels\): output differs by up to [0-9.e-]+ "
        r"\([0-9.e-]+ of its largest reference magnitude",
    ):
        shrink(model, producer, SigmoidMLP.X, groups=SigmoidMLP.GROUPS)
    # with the full masks (consumer's slice too) the shrink is exact
    small = shrink(model, masks, SigmoidMLP.X, groups=SigmoidMLP.GROUPS)
    assert small.l1.out_features == small.l2.in_features == 4
    # a group that forgets a consumer gives a model that fails: reported as the check's failure
    bad_group = [Group(8, (M("l1.weight", 0), M("l1.bias", 0)))]
    with pytest.raises(
        ValueError,
        match=r"group 0 \(channels, 8 channels\): the shrunk model cannot run on "
        r"the example inputs: RuntimeError",
    ):
        shrink(model, prune_groups(params, bad_group, 0.5), SigmoidMLP.X, groups=bad_group)


def test_members_that_disagree_raise_naming_them():
    model = _model(SigmoidMLP)
    masks = prune_groups(_params(model), SigmoidMLP.GROUPS, 0.5)
    masks["l2.weight"] = torch.ones_like(masks["l2.weight"])
    with pytest.raises(
        ValueError,
        match=r"member 'l2.weight' \(dim 1\) and member 'l1.weight' \(dim 0\) keep "
        r"different channels",
    ):
        shrink(model, masks, SigmoidMLP.X, groups=SigmoidMLP.GROUPS)


def test_inexact_groups_are_skipped_unless_included_and_then_differ_as_documented():
    model = _model(LayerNormed)
    params = _params(model)
    with pytest.raises(ValueError, match="include_inexact=True"):
        prune_groups(params, LayerNormed.GROUPS, 0.5)
    masks = prune_groups(params, LayerNormed.GROUPS, 0.5, include_inexact=True)
    with pytest.warns(UserWarning, match=r"inexact group\(s\) \[0\].*LayerNorm ln normalizes"):
        small = shrink(model, masks, LayerNormed.X, groups=LayerNormed.GROUPS)
    assert small.ln.normalized_shape == (4,)
    ref = fp.functional_call(model, params, LayerNormed.X, masks=masks)
    # LayerNorm over 4 channels is not LayerNorm over 8 channels of which 4 are zero
    assert not torch.allclose(small(*LayerNormed.X), ref, atol=1e-3)
    # an exact group next to an inexact one: only the exact one is pruned by default
    mixed = LayerNormed.GROUPS + [Group(3, (M("l2.weight", 0), M("l2.bias", 0)))]
    masks = prune_groups(params, mixed, 1)
    assert set(masks) == {"l2.weight", "l2.bias"}


def test_unknown_owner_raises_naming_the_submodule_and_its_type():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return x * self.s

    model = nn.Sequential(nn.Linear(3, 8), Scale(), nn.Linear(8, 2))
    g = [Group(8, (M("0.weight", 0), M("0.bias", 0), M("1.s", 0), M("2.weight", 1)))]
    masks = prune_groups(_params(model), g, 0.5)
    with pytest.raises(ValueError, match=r"submodule '1' of type .*Scale.*owns \['1.s'\]"):
        shrink(model, masks, torch.randn(2, 3), groups=g)


def test_bad_groups_raise_before_anything():
    params = _params(_model(SigmoidMLP))
    with pytest.raises(KeyError, match="member 'nope.weight'"):
        prune_groups(params, [Group(8, (M("nope.weight", 0),))], 0.5)
    with pytest.raises(ValueError, match=r"offset 4 \+ 8 channels x unit 1 = 12"):
        prune_groups(params, [Group(8, (M("l1.weight", 0, offset=4),))], 0.5)
    with pytest.raises(ValueError, match="pools=3 does not divide channels=8"):
        prune_groups(params, [Group(8, (M("l1.weight", 0),), pools=3)], 0.5)
    with pytest.raises(IndexError, match="member 'l1.bias'"):
        prune_groups(params, [Group(8, (M("l1.bias", 1),))], 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune_groups(params, SigmoidMLP.GROUPS, 0.5, scope="layer")
    with pytest.raises(ValueError, match="round_to"):
        prune_groups(params, SigmoidMLP.GROUPS, 0.5, round_to=0)
    with pytest.raises(ValueError, match="amount"):
        prune_groups(params, SigmoidMLP.GROUPS, 1.5)
    with pytest.raises(ValueError, match="only 8 are alive"):
        prune_groups(params, SigmoidMLP.GROUPS, 9)


def test_group_importance_of_a_channel_dim_inside_a_tensor_equals_the_norm_of_each_moved_slice():
    """A member whose channels lie in a middle dim (a conv consumer's input channels, with an offset
    and a unit) scores each channel by the norm of its slice, as the moved-to-front reference does;
    masks and kept channels of such members read the same slices."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5, 14, 3, 2, generator=gen)  # channels 2..13 of dim 1, unit 3: 4 channels
    g = Group(4, (M("w", 1, 2, 3),))
    rows = w[:, 2:14].movedim(1, 0).reshape(4, 3, -1)
    for imp, ref in (("l2", rows.square().sum((1, 2))), ("l1", rows.abs().sum((1, 2)))):
        torch.testing.assert_close(group_importance(g, {"w": w}, imp), ref)
    masks = prune_groups({"w": w}, [g], 2)
    dropped = rows.square().sum((1, 2)).argsort()[:2].sort().values.tolist()
    keep = torch.ones(14, dtype=torch.bool)
    for c in dropped:
        keep[2 + 3 * c : 5 + 3 * c] = False
    assert torch.equal(masks["w"], keep.view(1, 14, 1, 1).expand(5, 14, 3, 2))
    assert kept_channels(masks, [g])[0]["kept"] == [c for c in range(4) if c not in dropped]


def test_group_l2_importance_sums_squared_norms_over_members_and_l1_and_callables():
    w1 = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    b1 = torch.tensor([1.0, -2.0, 0.0])
    w2 = torch.tensor([[1.0, 1.0, 1.0], [0.0, -1.0, 2.0]])
    g = Group(3, (M("w1", 0), M("b1", 0), M("w2", 1)))
    vals = {"w1": w1, "b1": b1, "w2": w2}
    expect_l2 = w1.square().sum(1) + b1.square() + w2.square().sum(0)
    torch.testing.assert_close(group_importance(g, vals), expect_l2)
    torch.testing.assert_close(group_importance(g, vals, "l1"), w1.abs().sum(1) + b1.abs() + w2.abs().sum(0))
    torch.testing.assert_close(group_importance(g, vals, lambda rows: rows.amax(1)), w1.amax(1) + b1 + w2.amax(0))
    # pruning 1 channel drops the least important one (channel 1: 1 + 4 + 2 = 7) in every member
    masks = prune_groups(vals, [g], 1)
    assert expect_l2.tolist() == [27.0, 7.0, 9.0]
    assert kept_channels(masks, [g])[0]["kept"] == [0, 2]
    assert masks["w2"].tolist() == [[True, False, True]] * 2 and masks["b1"].tolist() == [True, False, True]


def test_scores_replace_params_in_the_norms():
    model = _model(SigmoidMLP)
    params = _params(model)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def loss(p, batch):
        return nn.functional.cross_entropy(fp.functional_call(model, p, (batch[0],)), batch[1])

    scores = fp.saliency.taylor(loss, params, (x, y))
    masks = prune_groups(params, SigmoidMLP.GROUPS, 0.5, scores=scores, importance="l1")
    imp = group_importance(SigmoidMLP.GROUPS[0], {**params, **scores}, "l1")
    kept = kept_channels(masks, SigmoidMLP.GROUPS)[0]["kept"]
    assert imp[kept].min() >= imp[[c for c in range(8) if c not in kept]].max()
    shrink(model, masks, SigmoidMLP.X, groups=SigmoidMLP.GROUPS)


def test_pools_round_to_and_min_channels():
    params = {"w": torch.arange(1.0, 17.0).reshape(16, 1), "v": torch.ones(1, 16)}
    g = Group(16, (M("w", 0), M("v", 1)), pools=4)

    def keep(masks):
        return masks["w"].flatten()

    # an equal count in every pool of 4: the two smallest of each
    k = keep(prune_groups(params, [g], 0.5))
    assert k.reshape(4, 4).sum(1).tolist() == [2, 2, 2, 2]
    assert k.reshape(4, 4).tolist() == [[False, False, True, True]] * 4
    # an int amount is a count for the whole group, split evenly over the pools
    assert int(keep(prune_groups(params, [g], 8)).sum()) == 8
    flat = Group(16, (M("w", 0), M("v", 1)))
    # round_to: the kept width rounded up to a multiple (16 * 0.3 = 4.8 -> 5 pruned, 11 kept -> 12)
    assert int(keep(prune_groups(params, [flat], 0.3, round_to=4)).sum()) == 12
    assert int(keep(prune_groups(params, [flat], 0.3)).sum()) == 11
    # with pools, round_to holds for the total: 4 pools keep 2 each = 8, a multiple of 8
    assert int(keep(prune_groups(params, [g], 0.6, round_to=8)).sum()) == 8
    # min_channels
    assert int(keep(prune_groups(params, [flat._replace(min_channels=6)], 0.9)).sum()) == 6
    assert int(keep(prune_groups(params, [flat], 1.0)).sum()) == 1  # never below 1 by default


def test_prior_masks_stay_pruned_and_count_as_gone():
    model = _model(ConvBN)
    params = _params(model)
    first = prune_groups(params, ConvBN.GROUPS, 0.25)
    second = prune_groups(params, ConvBN.GROUPS, 0.5, masks=first)
    for name in first:
        assert not bool((second[name] & ~first[name]).any())
    kept1 = [len(e["kept"]) for e in kept_channels(first, ConvBN.GROUPS)]
    kept2 = [len(e["kept"]) for e in kept_channels(second, ConvBN.GROUPS)]
    assert kept1 == [6, 4] and kept2 == [3, 2]  # half of the survivors
    # unrelated prior masks are carried over
    extra = prune_groups(params, ConvBN.GROUPS[:1], 0.5, masks={"fc.bias": torch.tensor([True, False, True, True])})
    assert extra["fc.bias"].tolist() == [True, False, True, True]
    shrink(model, second, ConvBN.X, groups=ConvBN.GROUPS)


def test_a_param_in_two_groups_gets_the_product():
    model = _model(ConvBN)
    masks = prune_groups(_params(model), ConvBN.GROUPS, 0.5)
    out_keep = masks["c2.bias"]
    in_keep = masks["b1.bias"]
    torch.testing.assert_close(
        masks["c2.weight"], (out_keep[:, None, None, None] & in_keep[None, :, None, None]).expand(6, 8, 3, 3)
    )


@pytest.mark.parametrize("scope", ["local", "global"])
def test_vmap_over_amounts_and_meta(scope):
    model = _model(Depthwise)
    params = _params(model)
    amounts = torch.tensor([0.0, 0.25, 0.5, 0.75])
    batched = torch.func.vmap(lambda a: prune_groups(params, Depthwise.GROUPS, a, scope=scope, round_to=2))(amounts)
    for i, a in enumerate(amounts.tolist()):
        one = prune_groups(params, Depthwise.GROUPS, a, scope=scope, round_to=2)
        assert set(one) == set(batched)
        for name in one:
            assert torch.equal(batched[name][i], one[name]), (a, name)
    meta = {name: p.to("meta") for name, p in params.items()}
    on_meta = prune_groups(meta, Depthwise.GROUPS, 0.5, scope=scope)
    eager = prune_groups(params, Depthwise.GROUPS, 0.5, scope=scope)
    assert all(on_meta[n].device.type == "meta" and on_meta[n].shape == eager[n].shape for n in eager)


def test_global_scope_normalizes_by_the_group_mean():
    # group a's importances are 100x group b's: unnormalized, b would lose everything first
    params = {"a": torch.tensor([[10.0], [20.0], [30.0], [40.0]]), "b": torch.tensor([[0.1], [0.4], [0.2], [0.3]])}
    ga, gb = Group(4, (M("a", 0),)), Group(4, (M("b", 0),))
    masks = prune_groups(params, [ga, gb], 0.5, scope="global", importance="l1")
    # normalized: a = [0.4, 0.8, 1.2, 1.6], b = [0.4, 1.6, 0.8, 1.2]; the 4 lowest: a0, b0, a1, b2
    assert masks["a"].flatten().tolist() == [False, False, True, True]
    assert masks["b"].flatten().tolist() == [False, True, False, True]


def test_shrunk_state_dict_compile_export_and_functional_call(tmp_path):
    model = _model(Residual)
    params = _params(model)
    masks = prune_groups(params, Residual.GROUPS, 0.5)
    small = shrink(model, masks, Residual.X, groups=Residual.GROUPS).eval()
    want = small(*Residual.X)
    path = tmp_path / "small.pt"
    torch.save(small.state_dict(), path)
    again = shrink(model, masks, Residual.X, groups=Residual.GROUPS, check=False)
    again.load_state_dict(torch.load(path))
    torch.testing.assert_close(again.eval()(*Residual.X), want)
    got = torch.func.functional_call(small, dict(small.named_parameters()), Residual.X)
    torch.testing.assert_close(got, want)
    exported = torch.export.export(small, Residual.X)
    torch.testing.assert_close(exported.module()(*Residual.X), want)


def test_shrunk_module_compiles():
    model = _model(SigmoidMLP)
    masks = prune_groups(_params(model), SigmoidMLP.GROUPS, 0.5)
    small = shrink(model, masks, SigmoidMLP.X, groups=SigmoidMLP.GROUPS)
    compiled = torch.compile(small, backend="eager")  # the inductor backend compiles C++: too slow here
    torch.testing.assert_close(compiled(*SigmoidMLP.X), small(*SigmoidMLP.X))


def test_kept_channels_carry_a_shrink_to_a_fresh_model(tmp_path):
    model = _model(Concat)
    params = _params(model)
    masks = prune_groups(params, Concat.GROUPS, 0.5)
    small = shrink(model, masks, Concat.X, groups=Concat.GROUPS)
    (tmp_path / "kept.json").write_text(json.dumps(kept_channels(masks, Concat.GROUPS)))
    torch.save(small.state_dict(), tmp_path / "small.pt")
    # "another process": a model built from the class, the kept channels and the state_dict
    torch.manual_seed(123)
    fresh = Concat()
    rebuilt = shrink_to(fresh, json.loads((tmp_path / "kept.json").read_text()))
    rebuilt.load_state_dict(torch.load(tmp_path / "small.pt"))
    torch.testing.assert_close(rebuilt.eval()(*Concat.X), small.eval()(*Concat.X))
    assert fresh.r.in_channels == 10 and rebuilt.r.in_channels == 5  # the fresh model itself untouched
    with pytest.raises(ValueError, match="keeps no channel"):
        shrink_to(fresh, [dict(kept_channels(masks, Concat.GROUPS)[0], kept=[])])
    with pytest.raises(ValueError, match="equal count"):
        bad = kept_channels(masks, Concat.GROUPS)[0]
        shrink_to(fresh, [dict(bad, pools=2, kept=[0, 1, 2])])


def test_tied_params_stay_tied():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight  # weight tying: embedding_dim is the pruned dim

        def forward(self, ids):
            return self.head(torch.relu(self.mix(self.emb(ids))))

    torch.manual_seed(0)
    model = Tied().eval()
    g = [Group(8, (M("emb.weight", 1), M("mix.weight", 1), M("mix.weight", 0), M("mix.bias", 0)))]
    ids = (torch.randint(0, 10, (2, 5)),)
    masks = prune_groups(_params(model), g, 0.5)
    small = shrink(model, masks, ids, groups=g)
    assert small.head.weight is small.emb.weight and small.emb.embedding_dim == 4
    assert small.head.in_features == 4 and len(list(small.parameters())) == 3


def test_mha_heads_and_attributes():
    from funcprune.structural import ShrunkMultiheadAttention

    model = _model(MHA)
    params = _params(model)
    masks = prune_groups(params, MHA.GROUPS, 0.25)
    small = shrink(model, masks, MHA.X, groups=MHA.GROUPS)
    assert (small.attn.embed_dim, small.attn.num_heads, small.attn.head_dim) == (12, 3, 4)
    assert type(small.attn) is nn.MultiheadAttention  # equal widths: torch's own module and forward
    # torch ties nn.MultiheadAttention's q/k/v width to its input width: heads alone, or the embedding
    # width alone (the tracer's groups: input side and output side), give ShrunkMultiheadAttention
    input_side = Group(16, (M("inp.weight", 0), M("inp.bias", 0), M("attn.in_proj_weight", 1)))
    output_side = Group(16, (M("attn.out_proj.weight", 0), M("attn.out_proj.bias", 0), M("out.weight", 1)))
    for groups, shape in (([MHA.GROUPS[0]], (2, 8, 16, 16)), ([input_side, output_side], (4, 16, 8, 8))):
        masks = prune_groups(params, groups, 0.5)
        small = shrink(model, masks, MHA.X, groups=groups)  # checked against the masked model
        assert isinstance(small.attn, ShrunkMultiheadAttention)
        att = small.attn
        assert (att.num_heads, att.in_proj_weight.shape[0] // 3, att.embed_dim, att.out_proj.out_features) == shape
        fresh = shrink_to(MHA(), kept_channels(masks, groups))
        fresh.load_state_dict(small.state_dict())
        torch.testing.assert_close(fresh.eval()(*MHA.X), small(*MHA.X))
        torch.testing.assert_close(torch.export.export(small, MHA.X).module()(*MHA.X), small(*MHA.X))


def test_ranking_only_through_the_kernel():
    import pathlib
    import re

    import funcprune.structural

    root = pathlib.Path(funcprune.structural.__file__).parent
    ranking = re.compile(r"topk|kthvalue|argsort|\.sort\(|\bsorted\(")
    offenders = [
        f"{p.name}:{i}"
        for p in root.glob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if ranking.search(line) and p.name in ("_prune.py",)
    ]
    assert offenders == []


# ----------------------------------------------------------------------------------------------
# Real models, groups written by hand (the tracer's own tests check that it finds them).


def _predicted_params(model, masks):
    """Parameters left after removing whole channels: each masked param keeps its mask's count."""
    return sum(int(masks[name].sum()) if name in masks else p.numel() for name, p in model.named_parameters())


def _resnet18_groups():
    """ResNet-18's 12 groups: one per stage (the residual width) and one inside each block."""

    def conv(name, dim):
        return [M(name + ".weight", dim)]

    out = []
    for stage, width in enumerate([64, 128, 256, 512], 1):
        members = _bn("bn1") + conv("conv1", 0) if stage == 1 else []
        for block in (0, 1):
            b = f"layer{stage}.{block}."
            members += conv(b + "conv2", 0) + _bn(b + "bn2")
            if stage > 1 and block == 0:
                members += conv(b + "downsample.0", 0) + _bn(b + "downsample.1")
            if stage == 1 or block == 1:
                members += conv(b + "conv1", 1)
            out.append(Group(width, tuple(conv(b + "conv1", 0) + _bn(b + "bn1") + conv(b + "conv2", 1))))
        if stage < 4:
            nxt = f"layer{stage + 1}.0."
            members += conv(nxt + "conv1", 1) + conv(nxt + "downsample.0", 1)
        else:
            members += [M("fc.weight", 1)]
        out.append(Group(width, tuple(members), kind="residual"))
    return out


@pytest.mark.slow
def test_torchvision_resnet18_by_hand():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    groups = _resnet18_groups()
    assert len(groups) == 12
    x = torch.randn(1, 3, 32, 32)
    params = _params(model)
    masks = prune_groups(params, groups, 0.5, scope="global", round_to=8)
    small = shrink(model, masks, (x,), groups=groups)
    torch.testing.assert_close(small(x), fp.functional_call(model, params, (x,), masks=masks), rtol=1e-4, atol=1e-5)
    assert _n_params(small) == _predicted_params(model, masks) < _n_params(model)
    assert all(len(e["kept"]) % 8 == 0 for e in kept_channels(masks, groups))
    stage2 = small.layer2
    assert stage2[0].downsample[0].out_channels == stage2[0].conv2.out_channels == stage2[1].bn2.num_features


def _transformer_groups(kind, layers, heads, hidden, inner, kv_heads=None, mode="q"):
    hd = hidden // heads
    out = []
    for layer in range(layers):
        if kind == "bert":
            a, f = f"encoder.layer.{layer}.attention.", f"encoder.layer.{layer}."
            qkv = [M(a + f"self.{n}.{t}", 0, 0, hd) for n in ("query", "key", "value") for t in ("weight", "bias")]
            out.append(Group(heads, (*qkv, M(a + "output.dense.weight", 1, 0, hd)), kind="heads"))
            out.append(
                Group(
                    inner,
                    (
                        M(f + "intermediate.dense.weight", 0),
                        M(f + "intermediate.dense.bias", 0),
                        M(f + "output.dense.weight", 1),
                    ),
                    kind="mlp",
                )
            )
        elif kind == "gpt2":  # Conv1D weights are (in, out): the fused q/k/v output is dim 1, at 3 offsets
            a, f = f"transformer.h.{layer}.attn.", f"transformer.h.{layer}.mlp."
            qkv = [M(a + "c_attn.weight", 1, o * hidden, hd) for o in range(3)]
            qkv += [M(a + "c_attn.bias", 0, o * hidden, hd) for o in range(3)]
            out.append(Group(heads, (*qkv, M(a + "c_proj.weight", 0, 0, hd)), kind="heads"))
            out.append(
                Group(inner, (M(f + "c_fc.weight", 1), M(f + "c_fc.bias", 0), M(f + "c_proj.weight", 0)), kind="mlp")
            )
        else:  # llama, grouped-query attention
            a, f = f"model.layers.{layer}.self_attn.", f"model.layers.{layer}.mlp."
            if mode == "kv":  # whole key/value groups, each with its query heads
                r = heads // kv_heads
                out.append(
                    Group(
                        kv_heads,
                        (
                            M(a + "k_proj.weight", 0, 0, hd),
                            M(a + "v_proj.weight", 0, 0, hd),
                            M(a + "q_proj.weight", 0, 0, hd * r),
                            M(a + "o_proj.weight", 1, 0, hd * r),
                        ),
                        kind="heads",
                    )
                )
            else:  # query heads, an equal count in each key/value group
                out.append(
                    Group(
                        heads,
                        (M(a + "q_proj.weight", 0, 0, hd), M(a + "o_proj.weight", 1, 0, hd)),
                        kind="heads",
                        pools=kv_heads,
                    )
                )
            out.append(
                Group(
                    inner,
                    (M(f + "gate_proj.weight", 0), M(f + "up_proj.weight", 0), M(f + "down_proj.weight", 1)),
                    kind="mlp",
                )
            )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama-q", "llama-kv"])
def test_transformers_heads_and_mlp_by_hand(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    layers, heads, hidden, inner, kv = 2, 4, 32, 64, 2
    if kind == "bert":
        model = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=50,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=inner,
                max_position_embeddings=16,
            )
        )
    elif kind == "gpt2":
        inner = 4 * hidden
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=50,
                n_embd=hidden,
                n_layer=layers,
                n_head=heads,
                n_positions=16,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    else:
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=50,
                hidden_size=hidden,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                num_key_value_heads=kv,
                intermediate_size=inner,
                max_position_embeddings=16,
            )
        )
    model.eval()
    groups = _transformer_groups(kind.split("-")[0], layers, heads, hidden, inner, kv, kind.split("-")[-1])
    ids = (torch.randint(0, 50, (2, 7)),)
    params = _params(model)
    masks = prune_groups(params, groups, 0.5)
    # checked against the masked model (a key/value cache output would keep the pruned heads: none asked for)
    small = shrink(model, masks, ids, groups=groups, kwargs=None if kind == "bert" else {"use_cache": False})
    assert _n_params(small) == _predicted_params(model, masks) < _n_params(model)
    if kind == "bert":
        att = small.encoder.layer[0].attention.self
        assert (att.num_attention_heads, att.all_head_size) == (2, 16)
    elif kind == "gpt2":
        att = small.transformer.h[0].attn
        assert (att.num_heads, att.split_size, att.c_attn.nf, small.transformer.h[0].mlp.c_fc.nf) == (2, 16, 48, 64)
    else:
        att = small.model.layers[0].self_attn
        want = (2, 2, 1) if kind == "llama-q" else (2, 1, 2)
        assert (att.num_heads, att.num_key_value_heads, att.num_key_value_groups) == want


@pytest.mark.slow
def test_same_shrunk_shapes_as_torch_pruning_for_the_same_channels():
    # Anchored against the peer: Torch-Pruning (DepGraph) removes the same channels of ResNet-18's
    # 12 groups and gives a model of exactly the same shapes as shrink_to.
    torchvision = pytest.importorskip("torchvision")
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    groups = _resnet18_groups()
    gen = torch.Generator().manual_seed(0)
    kept = []
    for g in groups:
        keep = torch.rand(g.channels, generator=gen) < 0.6
        keep[0] = True
        kept.append(
            {"channels": g.channels, "members": [list(m) for m in g.members], "kept": keep.nonzero().flatten().tolist()}
        )
    ours = shrink_to(model, kept)
    theirs = __import__("copy").deepcopy(model)
    dg = tp.DependencyGraph().build_dependency(theirs, example_inputs=x)
    for g, entry in zip(groups, kept):
        root = g.members[0].name.rsplit(".", 1)[0]  # the group's first producer conv
        root = root if root != "bn1" else "conv1"
        pruned = [c for c in range(g.channels) if c not in entry["kept"]]
        group = dg.get_pruning_group(theirs.get_submodule(root), tp.prune_conv_out_channels, idxs=pruned)
        group.prune()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for name, value in ours.state_dict().items():  # the same entries, too
        assert torch.equal(value, theirs.state_dict()[name]), name
    torch.testing.assert_close(ours(x), theirs(x))


def test_unstructured_masks_underneath_are_kept_as_zeros():
    model = _model(Residual)
    params = _params(model)
    weights = [name for name in params if name.endswith("weight") and params[name].dim() == 4]
    sparse = fp.prune(params, fp.l1_unstructured, 0.3, include=weights)
    masks = prune_groups(params, Residual.GROUPS, 0.5, masks=sparse)
    small = shrink(model, masks, Residual.X, groups=Residual.GROUPS)
    torch.testing.assert_close(small(*Residual.X), fp.functional_call(model, params, Residual.X, masks=masks))
    # the surviving zeros are still there in the smaller weights
    assert int((small.a.weight == 0).sum()) == int((~masks["a.weight"][masks["a.bias"]][:, masks["bs.bias"]]).sum())


# ----------------------------------------------------------------------------------------------
# End to end with the tracer: groups -> prune_groups -> shrink.


def _traced_groups():
    import funcprune.structural as structural

    return getattr(structural, "groups", None)


@pytest.mark.skipif(
    _traced_groups() is None,
    reason="funcprune.structural.groups (the struct-groups work) is not merged on this branch yet",
)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_end_to_end_with_traced_groups(name):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomize_bn(getattr(torchvision.models, name)(weights=None, num_classes=10))
    x = torch.randn(1, 3, 32, 32)
    groups = _traced_groups()(model, (x,))
    params = _params(model)
    masks = prune_groups(params, groups, 0.5, scope="global")
    small = shrink(model, masks, (x,))  # groups traced again inside, and the output check
    torch.testing.assert_close(small(x), fp.functional_call(model, params, (x,), masks=masks), rtol=1e-4, atol=1e-5)
    assert _n_params(small) == _predicted_params(model, masks) < 0.6 * _n_params(model)


@pytest.mark.skipif(
    _traced_groups() is None,
    reason="funcprune.structural.groups (the struct-groups work) is not merged on this branch yet",
)
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_transformers_end_to_end_with_traced_groups(kind):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        model = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=50,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                max_position_embeddings=16,
            )
        )
    else:
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=50,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=64,
                max_position_embeddings=16,
            )
        )
    model.eval()
    ids, kwargs = (torch.randint(0, 50, (2, 7)),), {"use_cache": False}
    groups = _traced_groups()(model, ids, kwargs)
    assert {g.kind for g in groups} >= {"heads"}
    params = _params(model)
    masks = prune_groups(params, groups, 0.5)
    small = shrink(model, masks, ids, groups=groups, kwargs=kwargs)  # checked against the masked model
    assert _n_params(small) == _predicted_params(model, masks) < _n_params(model)


@pytest.mark.skipif(
    _traced_groups() is None,
    reason="funcprune.structural.groups (the struct-groups work) is not merged on this branch yet",
)
@pytest.mark.slow
def test_torchvision_vit_heads_and_mlp_with_traced_groups():
    # torchvision's ViT attends with nn.MultiheadAttention: its heads shrink alone (the residual
    # width is inexact: LayerNorm), so the shrunk attention is a ShrunkMultiheadAttention
    torchvision = pytest.importorskip("torchvision")
    from funcprune.structural import ShrunkMultiheadAttention

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    x = torch.randn(1, 3, 32, 32)
    groups = _traced_groups()(model, (x,))
    assert sorted(g.kind for g in groups).count("heads") == 2
    params = _params(model)
    masks = prune_groups(params, groups, 0.5)
    small = shrink(model, masks, (x,), groups=groups)
    assert isinstance(small.encoder.layers[0].self_attention, ShrunkMultiheadAttention)
    assert small.encoder.layers[0].self_attention.num_heads == 2
    assert _n_params(small) == _predicted_params(model, masks) < _n_params(model)


class _SumOfSigmoid(nn.Module):
    """A residual under a LayerNorm (inexact) and a hidden width whose sigmoid is summed (a wrong 'exact' group)."""

    X = (torch.randn(3, 4),)

    def __init__(self):
        super().__init__()
        self.i, self.ln, self.a, self.o, self.h = (
            nn.Linear(4, 8),
            nn.LayerNorm(8),
            nn.Linear(8, 16),
            nn.Linear(16, 8),
            nn.Linear(8, 2),
        )

    def forward(self, x):
        y = self.i(x)
        z = self.a(self.ln(y))
        return self.h(y + self.o(z) + torch.sigmoid(z).sum(-1, keepdim=True))


def test_a_wrong_exact_group_raises_even_when_inexact_groups_are_pruned_too():
    model = _model(_SumOfSigmoid)
    params = _params(model)
    width = Group(
        8,
        (
            M("i.weight", 0),
            M("i.bias", 0),
            M("ln.weight", 0),
            M("ln.bias", 0),
            M("a.weight", 1),
            M("o.weight", 0),
            M("o.bias", 0),
            M("h.weight", 1),
        ),
        exact=False,
        reason="LayerNorm ln",
    )
    hidden = Group(16, (M("a.weight", 0), M("a.bias", 0), M("o.weight", 1)))
    masks = prune_groups(params, [width, hidden], 0.5, include_inexact=True)
    with pytest.raises(ValueError, match=r"inexact group\(s\) \[0\] left unpruned.*group 1 .*16 channels"):
        shrink(model, masks, _SumOfSigmoid.X, groups=[width, hidden])
    # the inexact group alone only warns; the exact group alone, when right, passes silently
    masks = prune_groups(params, [width], 0.5, include_inexact=True)
    with pytest.warns(UserWarning, match=r"inexact group\(s\) \[0\]"):
        shrink(model, masks, _SumOfSigmoid.X, groups=[width, hidden])
