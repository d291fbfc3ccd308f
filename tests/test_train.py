"""Masked updates and the lottery-ticket round; vmapped training == training each subnetwork alone."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
from _torch_ref import torch_mask

import funcprune as fp

WEIGHTS = ["0.weight", "2.weight"]


def setup(device, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(device)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randn(16, 6, device=device)
    y = torch.randint(0, 3, (16,), device=device)
    return model, params, x, y


# --- masked_update ---------------------------------------------------------------------------------


def test_masked_update_policies(device):
    _, params, _, _ = setup(device)
    updated = {n: p - 0.5 for n, p in params.items()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=WEIGHTS)
    before = {n: p.clone() for n, p in params.items()}
    for pruned in ("keep", "zero"):
        out = fp.masked_update(params, updated, masks, pruned=pruned)
        for name, value in out.items():
            keep = masks.get(name, torch.ones_like(value, dtype=torch.bool))
            assert torch.equal(value[keep], updated[name][keep])
            expected = params[name][~keep] if pruned == "keep" else torch.zeros_like(params[name][~keep])
            assert torch.equal(value[~keep], expected)
    for name, p in params.items():
        assert torch.equal(p, before[name])
    float_masks = {n: m.float() for n, m in masks.items()}
    for name, value in fp.masked_update(params, updated, float_masks).items():
        assert torch.equal(value, fp.masked_update(params, updated, masks)[name])


def test_masked_update_vmap_equals_loop():
    _, params, _, _ = setup("cpu")
    masks = [
        fp.prune(params, fp.random_unstructured, 0.3, include=WEIGHTS, generator=torch.Generator().manual_seed(k))
        for k in range(3)
    ]
    updates = [{n: p * (k + 2.0) for n, p in params.items()} for k in range(3)]
    out = torch.func.vmap(lambda u, m: fp.masked_update(params, u, m, pruned="zero"))(
        fp.stack(updates), fp.stack(masks)
    )
    for k in range(3):
        for name, value in fp.masked_update(params, updates[k], masks[k], pruned="zero").items():
            assert torch.equal(out[name][k], value)


def test_masked_update_errors():
    _, params, _, _ = setup("cpu")
    with pytest.raises(ValueError, match="pruned must be one of"):
        fp.masked_update(params, params, None, pruned="drop")
    with pytest.raises(ValueError, match=r"0.weight: the update has shape \(8, 6\) but the mask has shape \(6,\)"):
        fp.masked_update(params, params, {"0.weight": torch.ones(6, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"0.bias: the update has shape \(3,\) but the param has shape \(8,\)"):
        fp.masked_update(params, {**params, "0.bias": torch.zeros(3)}, None)
    with pytest.raises(KeyError, match="nope"):
        fp.masked_update(params, {"nope": torch.zeros(1)}, None)


# --- lottery_round ---------------------------------------------------------------------------------


def torch_module(params):
    """A torch module per selected weight, holding the dense values, for torch's global pruning."""
    modules = {}
    for name in WEIGHTS:
        module = nn.Module()
        module.register_parameter("weight", nn.Parameter(params[name].clone()))
        modules[name] = module
    return modules


@pytest.mark.parametrize("scope", ["global", "local"])
def test_lottery_rounds_match_torch_iterative_pruning(device, scope):
    _, rewind, _, _ = setup(device)
    modules = torch_module(rewind)
    masks, amount = None, 0.3
    for round_ in range(1, 5):
        trained = {n: torch.randn_like(p) for n, p in rewind.items()}  # stands in for a round of training
        new_masks, rewound = fp.lottery_round(trained, masks, rewind, amount, scope=scope, include=WEIGHTS)
        # torch oracle: same dense values in weight_orig, prune on top of the existing weight_mask
        for name, module in modules.items():
            with torch.no_grad():
                (module.weight_orig if round_ > 1 else module.weight).copy_(trained[name])
            for hook in module._forward_pre_hooks.values():
                hook(module, ())  # what a forward does: refresh weight = weight_orig * weight_mask
        if scope == "global":
            torch_prune.global_unstructured(
                [(m, "weight") for m in modules.values()], torch_prune.L1Unstructured, amount=amount
            )
        else:
            for module in modules.values():
                torch_prune.l1_unstructured(module, "weight", amount)
        for name, module in modules.items():
            assert torch.equal(new_masks[name], module.weight_mask.bool()), (name, round_)
            if masks is not None:
                assert not (new_masks[name] & ~masks[name]).any()  # masks only shrink
            assert torch.equal(rewound[name][new_masks[name]], rewind[name][new_masks[name]])
            assert not rewound[name][~new_masks[name]].any()
        for name in ("0.bias", "2.bias"):
            assert torch.equal(rewound[name], rewind[name]) and rewound[name] is not rewind[name]
        kept = sum(int(new_masks[n].sum()) for n in WEIGHTS)
        total = sum(rewind[n].numel() for n in WEIGHTS)
        assert abs(kept / total - (1 - amount) ** round_) < 0.02
        masks = new_masks


def test_lottery_layer_equals_l1_oracle():
    _, rewind, _, _ = setup("cpu")
    trained = {n: torch.randn_like(p) for n, p in rewind.items()}
    masks, _ = fp.lottery_round(trained, None, rewind, 0.4, scope="local", include=WEIGHTS)
    for name in WEIGHTS:
        assert torch.equal(masks[name], torch_mask(torch_prune.L1Unstructured(0.4), trained[name]))


def torch_global_masks(params, names, amount, rounds):
    """torch's iterative global L1 over ``names`` (one module each), ``rounds`` times on the same values."""
    modules = {}
    for name in names:
        modules[name] = nn.Module()
        modules[name].register_parameter("weight", nn.Parameter(params[name].clone()))
    for _ in range(rounds):
        torch_prune.global_unstructured(
            [(m, "weight") for m in modules.values()], torch_prune.L1Unstructured, amount=amount
        )
    return {name: m.weight_mask.bool() for name, m in modules.items()}


@pytest.mark.parametrize("scope", ["global", "local"])
def test_lottery_round_without_include_prunes_only_the_leaves_the_masks_cover(scope):
    """Rule: with ``include=None`` a round prunes the leaves ``masks`` covers (weight-only masks
    leave every bias alone), and all leaves when ``masks`` is None; torch's pruning is the oracle."""
    _, params, _, _ = setup("cpu")
    masks, _ = fp.lottery_round(params, None, params, 0.3, scope=scope, include=WEIGHTS)
    masks, rewound = fp.lottery_round(params, masks, params, 0.3, scope=scope)
    assert list(masks) == WEIGHTS
    if scope == "global":
        expected = torch_global_masks(params, WEIGHTS, 0.3, rounds=2)
    else:
        expected = {n: torch_global_masks(params, [n], 0.3, rounds=2)[n] for n in WEIGHTS}
    for name in WEIGHTS:
        assert torch.equal(masks[name], expected[name]), name
        assert int((~masks[name]).sum()) == int((~expected[name]).sum())
    for name in ("0.bias", "2.bias"):
        assert torch.equal(rewound[name], params[name])
    first, _ = fp.lottery_round(params, None, params, 0.3)  # no masks yet: every leaf
    assert list(first) == list(params)
    expected = torch_global_masks(params, list(params), 0.3, rounds=1)
    for name in params:
        assert torch.equal(first[name], expected[name]), name


def test_lottery_round_scope_layer_is_a_deprecated_spelling_of_local():
    """Rule: the old ``scope="layer"`` keeps working for one minor release, with a DeprecationWarning."""
    _, params, _, _ = setup("cpu")
    trained = {n: torch.randn_like(p) for n, p in params.items()}
    with pytest.warns(DeprecationWarning, match='scope="local"'):
        old, old_rewound = fp.lottery_round(trained, None, params, 0.4, scope="layer", include=WEIGHTS)
    new, new_rewound = fp.lottery_round(trained, None, params, 0.4, scope="local", include=WEIGHTS)
    for name in WEIGHTS:
        assert torch.equal(old[name], new[name]) and torch.equal(old_rewound[name], new_rewound[name])


def test_lottery_errors():
    _, params, _, _ = setup("cpu")
    with pytest.raises(ValueError, match="scope must be"):
        fp.lottery_round(params, None, params, 0.2, scope="row")
    with pytest.raises(ValueError, match=r"0.bias: rewind has shape \(3,\)"):
        fp.lottery_round(params, None, {**params, "0.bias": torch.zeros(3)}, 0.2)
    with pytest.raises(KeyError, match="rewind lacks '2.bias'"):
        fp.lottery_round(params, None, {n: p for n, p in params.items() if n != "2.bias"}, 0.2)
    with pytest.raises(ValueError, match="amount=1.5"):
        fp.lottery_round(params, None, params, 1.5)


# --- vmapped training == training each subnetwork alone -------------------------------------------


def make_step(model, x, y, lr=0.5, pruned="keep"):
    """One functional SGD step with weight decay (which would move pruned entries if unmasked)."""

    def loss(p, m):
        return F.cross_entropy(fp.functional_call(model, p, (x,), masks=m), y)

    def step(p, m):
        grads = torch.func.grad(loss)(p, m)
        return fp.masked_update(p, {n: v - lr * (grads[n] + 0.01 * v) for n, v in p.items()}, m, pruned=pruned)

    return step


@pytest.mark.parametrize("pruned", ["keep", "zero"])
def test_vmapped_training_equals_loop(pruned):
    model, params, x, y = setup("cpu")
    inits = [{n: p + 0.05 * k for n, p in params.items()} for k in range(4)]
    masks = fp.masks_for_scores(params, fp.l1_unstructured, fp.stack(inits), [0.0, 0.3, 0.6, 0.9], include=WEIGHTS)
    step = make_step(model, x, y, pruned=pruned)
    stacked = fp.stack(inits)
    for _ in range(5):
        stacked = fp.vmap_stacked(step, (0, 1))(stacked, masks)
    for k, alone in enumerate(inits):
        for _ in range(5):
            alone = step(alone, fp.unstack(masks)[k])
        for name, value in alone.items():
            torch.testing.assert_close(stacked[name][k], value)
        for name, mask in fp.unstack(masks)[k].items():
            pruned_values = stacked[name][k][~mask]
            expected = inits[k][name][~mask] if pruned == "keep" else torch.zeros_like(pruned_values)
            assert torch.equal(pruned_values, expected)


def test_torch_optim_on_stacked_leaves_equals_loop():
    """PyTorch's ensembling recipe: torch.optim on stacked leaf tensors, then masked_update."""
    model, params, x, y = setup("cpu")
    inits = [{n: p * (1 + 0.1 * k) for n, p in params.items()} for k in range(3)]
    masks = fp.masks_for_scores(params, fp.l1_unstructured, fp.stack(inits), [0.2, 0.5, 0.8], include=WEIGHTS)

    def loss(p, m):
        return F.cross_entropy(fp.functional_call(model, p, (x,), masks=m), y)

    def train(tree, mask_tree, losses):
        leaves = {n: t.clone().requires_grad_() for n, t in tree.items()}
        opt = torch.optim.SGD(leaves.values(), lr=0.3, momentum=0.9, weight_decay=0.01)
        for _ in range(4):
            opt.zero_grad()
            losses(leaves, mask_tree).sum().backward()
            before = {n: t.detach().clone() for n, t in leaves.items()}
            opt.step()
            with torch.no_grad():
                for n, t in fp.masked_update(before, {n: t.detach() for n, t in leaves.items()}, mask_tree).items():
                    leaves[n].copy_(t)
        return {n: t.detach() for n, t in leaves.items()}

    together = train(fp.stack(inits), masks, fp.vmap_stacked(loss, (0, 1)))
    for k, init in enumerate(inits):
        alone = train(init, fp.unstack(masks)[k], loss)
        for name, value in alone.items():
            torch.testing.assert_close(together[name][k], value)
        for name, mask in fp.unstack(masks)[k].items():
            assert torch.equal(together[name][k][~mask], init[name][~mask])  # "keep": pruned entries untouched
