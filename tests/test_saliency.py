"""Saliency scores through torch.func: autograd as the oracle, usable by every method, vmappable."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune

import funcprune as fp
from funcprune.saliency import gradient, magnitude, snip, taylor


def setup(device, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = {"0.weight": torch.rand(8, 6, device=device) > 0.3}
    batch = (torch.randn(5, 6, device=device), torch.randint(0, 3, (5,), device=device))

    def loss_fn(p, b):
        return F.cross_entropy(torch.func.functional_call(model, p, (b[0],)), b[1])

    return model, params, masks, batch, loss_fn


def autograd_grads(model, masks, batch):
    """Dense dL/dw at the masked weights with plain autograd."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            ref.get_parameter(name).mul_(mask)
    F.cross_entropy(ref(batch[0]), batch[1]).backward()
    return {k: p.grad for k, p in ref.named_parameters()}, {k: p.detach() for k, p in ref.named_parameters()}


def test_scores_match_autograd(device):
    model, params, masks, batch, loss_fn = setup(device)
    grads, effective = autograd_grads(model, masks, batch)
    g, s, t = (
        gradient(loss_fn, params, batch, masks=masks),
        snip(loss_fn, params, batch, masks=masks),
        taylor(loss_fn, params, batch, masks=masks),
    )
    for name in params:
        torch.testing.assert_close(g[name], grads[name].abs(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(s[name], (grads[name] * effective[name]).abs(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(t[name], (grads[name] * effective[name]) ** 2, rtol=1e-6, atol=1e-9)
    pruned = ~masks["0.weight"]
    assert (s["0.weight"][pruned] == 0).all() and (g["0.weight"][pruned] != 0).any()  # RigL needs these
    assert torch.equal(magnitude(params, masks=masks)["0.weight"], (params["0.weight"] * masks["0.weight"]).abs())


def test_taylor_per_channel():
    model, params, masks, batch, loss_fn = setup("cpu")
    grads, effective = autograd_grads(model, masks, batch)
    t = taylor(loss_fn, params, batch, masks=masks, dim=0)
    per_channel = (grads["2.weight"] * effective["2.weight"]).sum(dim=1) ** 2
    torch.testing.assert_close(t["2.weight"], per_channel[:, None].expand(3, 8), rtol=1e-5, atol=1e-9)
    assert t["0.bias"].shape == (8,)  # 1-D leaves keep per-entry scores


def test_scores_drive_every_method_like_torch_importance_scores():
    model, params, masks, batch, loss_fn = setup("cpu", seed=1)
    scores = snip(loss_fn, params, batch)
    ours = fp.prune(params, fp.l1_unstructured, 0.5, scores=scores, include=["2.weight"])
    ref = copy.deepcopy(model)
    torch_prune.l1_unstructured(ref[2], "weight", 0.5, importance_scores=scores["2.weight"])
    assert torch.equal(ours["2.weight"], ref[2].weight_mask.bool())
    ours = fp.prune(params, fp.ln_structured, 2, 1, 0, scores=scores, include=["0.weight"])
    torch_prune.ln_structured(ref[0], "weight", 2, 1, 0, importance_scores=scores["0.weight"])
    assert torch.equal(ours["0.weight"], ref[0].weight_mask.bool())
    weights = lambda n, p: n.endswith("weight")  # noqa: E731
    ours = fp.global_unstructured(params, 20, scores=scores, include=weights)
    ref = copy.deepcopy(model)
    torch_prune.global_unstructured(
        [(ref[0], "weight"), (ref[2], "weight")],
        torch_prune.L1Unstructured,
        amount=20,
        importance_scores={(ref[0], "weight"): scores["0.weight"], (ref[2], "weight"): scores["2.weight"]},
    )
    assert torch.equal(ours["0.weight"], ref[0].weight_mask.bool())
    assert torch.equal(ours["2.weight"], ref[2].weight_mask.bool())


def test_vmap_over_batches_and_models():
    model, params, masks, _, loss_fn = setup("cpu")
    xs, ys = torch.randn(4, 5, 6), torch.randint(0, 3, (4, 5))
    batched = torch.vmap(lambda x, y: snip(loss_fn, params, (x, y), masks=masks))(xs, ys)
    for k in range(4):
        single = snip(loss_fn, params, (xs[k], ys[k]), masks=masks)
        for name in params:
            torch.testing.assert_close(batched[name][k], single[name], rtol=1e-5, atol=1e-7)
    stacked = {name: torch.stack([p + 0.1 * k for k in range(3)]) for name, p in params.items()}
    batch = (xs[0], ys[0])
    per_model = torch.vmap(lambda p: taylor(loss_fn, p, batch, masks=masks))(stacked)
    for k in range(3):
        single = taylor(loss_fn, {n: p[k] for n, p in stacked.items()}, batch, masks=masks)
        for name in params:
            torch.testing.assert_close(per_model[name][k], single[name], rtol=1e-5, atol=1e-8)


def test_include_purity_and_errors():
    model, params, masks, batch, loss_fn = setup("cpu")
    snapshot = {k: v.clone() for k, v in params.items()}
    assert set(snip(loss_fn, params, batch, include=["2.weight"])) == {"2.weight"}
    assert all(torch.equal(params[k], snapshot[k]) for k in params)
    with pytest.raises(TypeError, match="loss_fn"):
        snip("not callable", params, batch)
    with pytest.raises(TypeError, match="dim"):
        taylor(loss_fn, params, batch, dim=1.5)
    with pytest.raises(KeyError):
        gradient(loss_fn, params, batch, masks={"nope": torch.ones(1)})


def test_pruned_nan_inf_score_zero_and_leave_the_rest_finite():
    """Scores are taken at the masked params with pruned entries exactly zero: a pruned NaN/inf scores zero."""
    model, params, masks, batch, loss_fn = setup("cpu")
    clean = {
        name: fn(loss_fn, params, batch, masks=masks)
        for name, fn in (("gradient", gradient), ("snip", snip), ("taylor", taylor))
    }
    clean["magnitude"] = magnitude(params, masks=masks)
    pruned = ~masks["0.weight"]
    dirty = dict(params)
    dirty["0.weight"] = params["0.weight"].clone()
    dirty["0.weight"][pruned] = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(
        int(pruned.sum()) // 3 + 1
    )[: int(pruned.sum())]
    for name, fn in (("gradient", gradient), ("snip", snip), ("taylor", taylor)):
        scores = fn(loss_fn, dirty, batch, masks=masks)
        for leaf in params:
            assert torch.equal(scores[leaf], clean[name][leaf]), (name, leaf)
    assert torch.equal(magnitude(dirty, masks=masks)["0.weight"], clean["magnitude"]["0.weight"])
    assert (magnitude(dirty, masks=masks)["0.weight"][pruned] == 0).all()
    assert (snip(loss_fn, dirty, batch, masks=masks)["0.weight"][pruned] == 0).all()


def test_masks_are_keyword_only_and_positional_masks_still_work_with_a_deprecation_warning():
    """Optional prior masks are keyword-only; positionally they give the same scores and warn DeprecationWarning."""
    model, params, masks, batch, loss_fn = setup("cpu")
    for name, fn, lead in (
        ("gradient", gradient, (loss_fn, params, batch)),
        ("snip", snip, (loss_fn, params, batch)),
        ("taylor", taylor, (loss_fn, params, batch)),
        ("magnitude", magnitude, (params,)),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the keyword spelling warns nothing
            keyword = fn(*lead, masks=masks)
        with pytest.warns(DeprecationWarning, match=f"saliency.{name}: passing masks positionally"):
            positional = fn(*lead, masks)
        assert set(positional) == set(keyword)
        assert all(torch.equal(positional[k], keyword[k]) for k in keyword), name
        assert not torch.equal(keyword["0.weight"], fn(*lead)["0.weight"])  # the masks were used
        with pytest.raises(TypeError, match="both positionally"):
            fn(*lead, masks, masks=masks)
        with pytest.raises(TypeError, match="keyword-only"):
            fn(*lead, masks, None)
