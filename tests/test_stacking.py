"""Stacking pytrees and making K masks in one vmap: vmap over K == loop over K, and torch as oracle."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from _torch_ref import torch_mask

import funcprune as fp
from funcprune._pytree import named_leaves


def make_params(device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (4, 3, 3, 3), "conv.bias": (4,), "fc.weight": (5, 12), "fc.bias": (5,)}
    return {name: torch.randn(shape, generator=gen).to(device) for name, shape in shapes.items()}


def weights(name, leaf):
    return name.endswith("weight")


def assert_trees_equal(a, b):
    na, nb = named_leaves(a), named_leaves(b)
    assert list(na) == list(nb)
    for name in na:
        assert torch.equal(na[name], nb[name]), name


# --- stack / unstack -------------------------------------------------------------------------------


def test_stack_unstack_round_trip(device):
    trees = [make_params(device, seed) for seed in range(3)]
    nested = [{"a": {"w": t["fc.weight"]}, "b": [t["fc.bias"]]} for t in trees]
    for group in (trees, nested):
        stacked = fp.stack(group)
        assert fp.stack_size(stacked) == 3
        for got, ref in zip(fp.unstack(stacked), group):
            assert_trees_equal(got, ref)


def test_stack_leaves_inputs_unchanged(device):
    trees = [make_params(device, seed) for seed in range(2)]
    copies = [{n: t.clone() for n, t in tree.items()} for tree in trees]
    stacked = fp.stack(trees)
    stacked["fc.weight"].add_(1.0)
    for tree, copy in zip(trees, copies):
        assert_trees_equal(tree, copy)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: {**t, "fc.weight": t["fc.weight"][:, :6]}, r"tree 1 leaf 'fc.weight' has shape \(5, 6\)"),
        (lambda t: {**t, "fc.bias": t["fc.bias"].double()}, r"tree 1 leaf 'fc.bias' .*float64"),
        (lambda t: {n: v for n, v in t.items() if n != "conv.bias"}, r"tree 1 .*missing \['conv.bias'\]"),
        (lambda t: {**t, "extra": t["fc.bias"]}, r"tree 1 .*extra \['extra'\]"),
    ],
)
def test_stack_mismatch_names_the_leaf(change, message):
    params = make_params("cpu")
    with pytest.raises(ValueError, match=message):
        fp.stack([params, change(params)])


def test_stack_and_unstack_errors():
    with pytest.raises(ValueError, match="at least one tree"):
        fp.stack([])
    with pytest.raises(ValueError, match=r"'b' has leading dim 3, but 'a' has 2"):
        fp.unstack({"a": torch.zeros(2, 4), "b": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match="'a' is 0-d"):
        fp.stack_size({"a": torch.zeros(())})
    with pytest.raises(ValueError, match="at least one leaf"):
        fp.unstack({})


# --- masks_for_amounts -----------------------------------------------------------------------------


@pytest.mark.parametrize("amounts", [[0.0, 0.1, 0.5, 0.75, 1.0], [0, 3, 7, 12]])
def test_amounts_l1_equals_loop_and_torch(device, amounts):
    params = make_params(device)
    prior = fp.prune(
        params, fp.random_unstructured, 0.2, include=weights, generator=torch.Generator(device).manual_seed(1)
    )
    stacked = fp.masks_for_amounts(params, fp.l1_unstructured, amounts, masks=prior, include=weights)
    assert set(stacked) == {"conv.weight", "fc.weight"}
    for k, amount in enumerate(amounts):
        loop = fp.prune(params, fp.l1_unstructured, amount, masks=prior, include=weights)
        assert_trees_equal(fp.unstack(stacked)[k], loop)
        for name in loop:
            ref = torch_mask(torch_prune.L1Unstructured(amount), params[name], prior[name])
            assert torch.equal(stacked[name][k], ref), (name, amount)


def test_amounts_ln_structured_equals_torch(device):
    params = make_params(device)
    amounts = [0.0, 0.25, 0.5, 1.0]
    stacked = fp.masks_for_amounts(params, fp.ln_structured, amounts, 2, 0, include=weights)
    for k, amount in enumerate(amounts):
        for name in stacked:
            ref = torch_mask(torch_prune.LnStructured(amount, 2, 0), params[name])
            assert torch.equal(stacked[name][k], ref), (name, amount)


@pytest.mark.parametrize("amounts", [[0.0, 0.3, 0.9], [1, 50, 100]])
def test_amounts_global_equals_loop_and_torch(amounts):
    params = make_params("cpu")
    stacked = fp.masks_for_amounts(params, fp.global_unstructured, amounts, include=weights)
    for k, amount in enumerate(amounts):
        loop = fp.global_unstructured(params, amount, include=weights)
        assert_trees_equal(fp.unstack(stacked)[k], loop)
        modules = {name: torch.nn.Module() for name in loop}
        for name, module in modules.items():
            module.register_parameter("weight", torch.nn.Parameter(params[name].clone()))
        torch_prune.global_unstructured(
            [(m, "weight") for m in modules.values()], torch_prune.L1Unstructured, amount=amount
        )
        for name, module in modules.items():
            assert torch.equal(stacked[name][k], module.weight_mask.bool()), (name, amount)


def test_amounts_tensor_and_meta():
    params = make_params("cpu")
    as_tensor = fp.masks_for_amounts(params, fp.l1_unstructured, torch.tensor([0.2, 0.6], dtype=torch.float64))
    as_list = fp.masks_for_amounts(params, fp.l1_unstructured, [0.2, 0.6])
    assert_trees_equal(as_tensor, as_list)
    meta = {n: t.to("meta") for n, t in params.items()}
    on_meta = fp.masks_for_amounts(meta, fp.l1_unstructured, [0.2, 0.6])
    for name, mask in on_meta.items():
        assert mask.device.type == "meta" and mask.shape == (2, *params[name].shape)


@pytest.mark.parametrize(
    "amounts, error, message",
    [
        ([0.5, 3], TypeError, "mixes counts"),
        ([0.5, 1.5], ValueError, "amount=1.5"),
        ([-1, 2], ValueError, "amount=-1"),
        ([], ValueError, "must not be empty"),
        ([0, 1000], ValueError, r"conv.weight: amount=1000 should be smaller"),
        (torch.zeros(2, 2), ValueError, r"1-D tensor, got shape \(2, 2\)"),
    ],
)
def test_amounts_errors(amounts, error, message):
    with pytest.raises(error, match=message):
        fp.masks_for_amounts(make_params("cpu"), fp.l1_unstructured, amounts)


# --- masks_for_seeds -------------------------------------------------------------------------------


def drop_largest(draws, amount):
    """Reference: keep mask after dropping round(amount * n) largest draws (RandomUnstructured's rule)."""
    flat = draws.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, round(amount * flat.numel())).indices] = False
    return keep.view(draws.shape)


def test_seeds_random_unstructured_equals_per_draw_loop(device):
    params = make_params(device)
    num = 6
    torch.manual_seed(123)
    stacked = fp.masks_for_seeds(params, fp.random_unstructured, num, 0.4, include=weights)
    torch.manual_seed(123)
    draws = {name: torch.rand(num, *params[name].shape, device=device) for name in stacked}
    for name, masks in stacked.items():
        for k in range(num):
            assert torch.equal(masks[k], drop_largest(draws[name][k], 0.4)), (name, k)
        assert len({tuple(m.flatten().tolist()) for m in masks}) == num  # K different masks
    torch.manual_seed(123)
    assert_trees_equal(fp.masks_for_seeds(params, fp.random_unstructured, num, 0.4, include=weights), stacked)


def test_seeds_structured_and_global_counts():
    params = make_params("cpu")
    structured = fp.masks_for_seeds(params, fp.random_structured, 5, 2, 0, include=weights)
    for mask in structured.values():
        assert mask.shape[0] == 5
        assert (mask.flatten(2).all(dim=2).sum(dim=1) == mask.shape[1] - 2).all()
    glob = fp.masks_for_seeds(params, fp.global_unstructured, 5, 30, include=weights)
    pruned = sum((~m).flatten(1).sum(dim=1) for m in glob.values())
    assert pruned.tolist() == [30] * 5


def test_seeds_errors():
    params = make_params("cpu")
    with pytest.raises(ValueError, match="num must be a positive int"):
        fp.masks_for_seeds(params, fp.random_unstructured, 0, 0.5)
    with pytest.raises(ValueError, match="generator is not supported"):
        fp.masks_for_seeds(params, fp.random_unstructured, 2, 0.5, generator=torch.Generator())


# --- masks_for_scores ------------------------------------------------------------------------------


def test_scores_equals_loop(device):
    params = make_params(device)
    score_trees = [{n: t for n, t in make_params(device, seed).items() if n != "fc.bias"} for seed in (5, 6, 7)]
    scores = fp.stack(score_trees)
    for amount in (0.3, [0.1, 0.5, 0.9]):
        stacked = fp.masks_for_scores(params, fp.l1_unstructured, scores, amount)
        for k, tree in enumerate(score_trees):
            amount_k = amount if isinstance(amount, float) else amount[k]
            loop = fp.prune(params, fp.l1_unstructured, amount_k, scores=tree)
            assert_trees_equal(fp.unstack(stacked)[k], loop)
    glob = fp.masks_for_scores(params, fp.global_unstructured, scores, [5, 10, 20], include=weights)
    for k, tree in enumerate(score_trees):
        assert_trees_equal(
            fp.unstack(glob)[k], fp.global_unstructured(params, [5, 10, 20][k], scores=tree, include=weights)
        )


def test_scores_errors():
    params = make_params("cpu")
    scores = fp.stack([params, params])
    with pytest.raises(ValueError, match=r"'fc.bias' has leading dim 3, but 'conv.weight' has 2"):
        fp.masks_for_scores(params, fp.l1_unstructured, {**scores, "fc.bias": torch.zeros(3, 5)}, 0.5)
    with pytest.raises(ValueError, match=r"scores leaf 'fc.bias' has shape \(2, 4\)"):
        fp.masks_for_scores(params, fp.l1_unstructured, {**scores, "fc.bias": torch.zeros(2, 4)}, 0.5)
    with pytest.raises(ValueError, match="got 3 amounts for 2 stacked"):
        fp.masks_for_scores(params, fp.l1_unstructured, scores, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="conv.bias: amount=6 should be smaller"):
        fp.masks_for_scores(params, fp.l1_unstructured, scores, 6)
    with pytest.raises(KeyError, match="nope"):
        fp.masks_for_scores(params, fp.l1_unstructured, {"nope": torch.zeros(2, 3)}, 0.5)
