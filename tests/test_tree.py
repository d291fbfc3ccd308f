"""Pytree functions: prune, global_unstructured, apply_masks, mask_grads, sparsity."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprune as fp


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)).to(dtype)


def params_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def torch_masks(model):
    return {name[: -len("_mask")]: b.bool() for name, b in model.named_buffers() if name.endswith("_mask")}


def split(name):
    module, attr = name.rsplit(".", 1)
    return module, attr


def test_prune_matches_torch_per_layer_and_on_top_of_existing_masks():
    model = mlp()
    params = params_of(model)
    masks = fp.prune(params, fp.l1_unstructured, 0.3, include=lambda name, p: p.dim() == 2)
    masks = fp.prune(params, fp.ln_structured, 0.25, 2, 0, masks=masks, include=["0.weight", "2.weight"])
    masks = fp.prune(params, fp.l1_unstructured, 2, masks=masks, include=["4.bias"])
    for name in ("0.weight", "2.weight", "4.weight"):
        torch_prune.l1_unstructured(model.get_submodule(split(name)[0]), "weight", 0.3)
    for name in ("0.weight", "2.weight"):
        torch_prune.ln_structured(model.get_submodule(split(name)[0]), "weight", 0.25, 2, 0)
    torch_prune.l1_unstructured(model[4], "bias", 2)
    assert masks.keys() == torch_masks(model).keys()
    for name, mask in torch_masks(model).items():
        assert torch.equal(masks[name], mask), name
    assert list(masks) == [n for n in params if n in masks], "masks follow the params' order"


def test_prune_with_scores_and_nested_trees():
    model = mlp()
    params = params_of(model)
    scores = {"2.weight": torch.randn(16, 20)}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, scores=scores, include=["2.weight"])
    torch_prune.l1_unstructured(model[2], "weight", 0.5, importance_scores=scores["2.weight"])
    assert torch.equal(masks["2.weight"], model[2].weight_mask.bool())
    nested = {"enc": {"weight": params["0.weight"], "bias": params["0.bias"]}, "head": [params["4.weight"]]}
    nested_masks = fp.prune(nested, fp.l1_unstructured, 0.5, include=lambda name, p: name.endswith("weight"))
    assert set(nested_masks["enc"]) == {"weight"}, "dicts omit unmasked names"
    assert nested_masks["head"] == [None], "sequences keep their length, with None holes"
    assert torch.equal(nested_masks["enc"]["weight"], fp.l1_unstructured(params["0.weight"], 0.5))
    all_masks = fp.prune(nested, fp.identity)
    assert isinstance(all_masks["head"], list) and all_masks["head"][0].all()


def test_prune_random_with_generator_is_reproducible_and_pure():
    params = params_of(mlp())
    before = copy.deepcopy(params)
    a = fp.prune(params, fp.random_unstructured, 0.4, generator=torch.Generator().manual_seed(3))
    b = fp.prune(params, fp.random_unstructured, 0.4, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(before[n], params[n]) for n in params)


def test_prune_errors_name_the_leaf_and_change_nothing():
    params = params_of(mlp())
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["0.weight"])
    with pytest.raises(ValueError, match=r"^0\.bias: Structured pruning"):
        fp.prune(params, fp.ln_structured, 0.5, 2, 0, masks=masks)
    with pytest.raises(IndexError, match=r"^0\.weight: Invalid index 3"):
        fp.prune(params, fp.ln_structured, 0.5, 2, 3, include=["0.weight"])
    with pytest.raises(ValueError, match=r"^0\.weight: amount=200 should be smaller"):
        fp.prune(params, fp.l1_unstructured, 200, masks=masks, include=["0.weight"])
    with pytest.raises(KeyError, match="conv9.weight"):
        fp.prune(params, fp.l1_unstructured, 0.5, masks={"conv9.weight": torch.ones(2)})
    with pytest.raises(KeyError, match="nope"):
        fp.prune(params, fp.l1_unstructured, 0.5, include=["nope"])
    with pytest.raises(KeyError, match="scores"):
        fp.prune(params, fp.l1_unstructured, 0.5, scores={"x": torch.ones(1)})
    with pytest.raises(ValueError, match=r"^0\.weight: scores have shape \(16,\)"):
        fp.prune(params, fp.l1_unstructured, 0.5, scores={"0.weight": torch.ones(16)})
    with pytest.raises(ValueError, match=r"^0\.weight: scores have shape"):
        fp.global_unstructured(params, 0.5, scores={"0.weight": torch.ones(16)})
    with pytest.raises(ValueError, match=r"^2\.weight: mask has shape"):
        fp.prune(params, fp.l1_unstructured, 0.5, masks={"2.weight": torch.ones(3, dtype=torch.bool)})
    assert list(masks) == ["0.weight"]


def _global_setup(model, prior_names):
    params = params_of(model)
    masks = {}
    for name in prior_names:
        module, attr = split(name)
        torch_prune.l1_unstructured(model.get_submodule(module), attr, 0.4)
        masks[name] = model.get_submodule(module).get_buffer(attr + "_mask").bool()
    return params, masks


@pytest.mark.slow  # a long property test
@settings(max_examples=40, deadline=None)
@given(
    st.one_of(st.floats(0, 1), st.integers(0, 300)),
    st.sets(st.sampled_from(["0.weight", "2.weight", "2.bias"])),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    st.integers(1, 500),
)
def test_global_l1_matches_torch(amount, prior_names, dtype, chunk):
    model = mlp(dtype=dtype)
    names = ["0.weight", "2.weight", "2.bias", "4.weight"]
    params, masks = _global_setup(model, sorted(prior_names))
    scores = {"4.weight": torch.randn(5, 16).to(dtype)}
    targets = [(model.get_submodule(split(n)[0]), split(n)[1]) for n in names]
    try:
        torch_prune.global_unstructured(
            targets, torch_prune.L1Unstructured, amount=amount, importance_scores={targets[3]: scores["4.weight"]}
        )
    except ValueError:
        with pytest.raises(ValueError, match="amount"):
            fp.global_unstructured(params, amount, masks=masks, scores=scores, include=names, chunk_size=chunk)
        return
    got = fp.global_unstructured(params, amount, masks=masks, scores=scores, include=names, chunk_size=chunk)
    ref = torch_masks(model)
    assert got.keys() == ref.keys()
    keys = torch.cat([scores.get(n, params[n]).abs().double().reshape(-1) for n in names])
    flat_got = torch.cat([got[n].reshape(-1) for n in names])
    flat_ref = torch.cat([ref[n].reshape(-1) for n in names])
    assert int(flat_got.sum()) == int(flat_ref.sum())
    if not torch.equal(flat_got, flat_ref):  # only entries tied at the threshold may differ
        assert keys[flat_got ^ flat_ref].unique().numel() == 1


@pytest.mark.parametrize("amount", [0.0, 0.2, 0.8, 1.0, 37])
def test_global_random_fresh_masks_are_torchs_for_the_same_seed(amount):
    model = mlp()
    params = params_of(model)
    targets = [(model[0], "weight"), (model[2], "weight"), (model[4], "bias")]
    torch.manual_seed(11)
    torch_prune.global_unstructured(targets, torch_prune.RandomUnstructured, amount=amount)
    torch.manual_seed(11)
    got = fp.global_unstructured(params, amount, method="random", include=["0.weight", "2.weight", "4.bias"])
    for name, mask in torch_masks(model).items():
        assert torch.equal(got[name], mask), name


def test_global_random_on_prior_masks_keeps_exact_counts():
    params = params_of(mlp())
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["0.weight"])
    got = fp.global_unstructured(
        params, 0.25, masks=masks, method=fp.random_unstructured, generator=torch.Generator().manual_seed(0)
    )
    alive = sum(p.numel() for p in params.values()) - int((~masks["0.weight"]).sum())
    assert sum(int((~m).sum()) for m in got.values()) - int((~masks["0.weight"]).sum()) == round(0.25 * alive)
    assert not (got["0.weight"] & ~masks["0.weight"]).any()


def test_global_l1_under_vmap_and_on_meta():
    params = params_of(mlp())
    w, b = params["2.weight"], params["2.bias"]
    stacked = {"2.weight": torch.rand(6, *w.shape) > 0.3, "2.bias": torch.rand(6, *b.shape) > 0.3}
    sub = {"2.weight": w, "2.bias": b}
    batched = torch.func.vmap(lambda m: fp.global_unstructured(sub, 0.5, masks=m))(stacked)
    for i in range(6):
        eager = fp.global_unstructured(sub, 0.5, masks={n: m[i] for n, m in stacked.items()})
        assert all(torch.equal(batched[n][i], eager[n]) for n in sub)
    amounts = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    sweep = torch.func.vmap(lambda a: fp.global_unstructured(sub, a))(amounts)
    for i, a in enumerate(amounts.tolist()):
        assert all(torch.equal(sweep[n][i], fp.global_unstructured(sub, a)[n]) for n in sub)
    meta = {n: torch.empty(p.shape, device="meta") for n, p in sub.items()}
    for method in ("l1", "random"):
        out = fp.global_unstructured(
            meta, 0.5, masks={"2.bias": torch.empty(b.shape, dtype=torch.bool, device="meta")}, method=method
        )
        assert all(m.device.type == "meta" and m.dtype == torch.bool for m in out.values())


def test_global_errors():
    params = params_of(mlp())
    total = sum(p.numel() for p in params.values())
    with pytest.raises(ValueError, match=f"amount={total + 1} should be smaller"):
        fp.global_unstructured(params, total + 1)
    with pytest.raises(ValueError, match="method must be 'l1' or 'random'"):
        fp.global_unstructured(params, 0.5, method="l2")
    with pytest.raises(ValueError, match="at least one leaf"):
        fp.global_unstructured(params, 0.5, include=lambda name, p: False)
    with pytest.raises(TypeError, match="amount"):
        fp.global_unstructured(params, "half")
    with pytest.raises(ValueError, match=r"^0\.weight: mask has shape"):
        fp.global_unstructured(params, 0.5, masks={"0.weight": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="chunk_size"):
        fp.global_unstructured(params, 0.5, chunk_size=0)


def test_apply_masks_and_mask_grads(device):
    params = {n: p.to(device) for n, p in params_of(mlp()).items()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["0.weight"])
    out = fp.apply_masks(params, masks)
    assert torch.equal(out["0.weight"], params["0.weight"] * masks["0.weight"])
    assert out["0.bias"] is params["0.bias"]
    half = {n: p.to(torch.bfloat16) for n, p in params.items()}
    float_masks = {n: m.float() for n, m in masks.items()}
    assert fp.apply_masks(half, float_masks)["0.weight"].dtype == torch.bfloat16
    grads = fp.mask_grads(params, masks)
    assert (grads["0.weight"][~masks["0.weight"]] == 0).all()
    with pytest.raises(ValueError, match=r"0\.weight: mask has shape"):
        fp.apply_masks(params, {"0.weight": torch.ones(3, dtype=torch.bool, device=device)})
    with pytest.raises(KeyError, match="x.weight"):
        fp.mask_grads(params, {"x.weight": torch.ones(3, dtype=torch.bool)})


def test_apply_masks_under_autograd_matches_the_plain_product_and_keeps_a_1_byte_mask():
    torch.manual_seed(0)
    value = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 6) > 0.5

    def masked(v):
        return fp.apply_masks({"w": v}, {"w": mask})["w"]

    out = masked(value)
    assert torch.equal(out, value.detach() * mask)
    assert [t.element_size() for t in out.grad_fn.saved_tensors] == [1]  # the mask, not a float copy of it
    grad = torch.randn(4, 6, dtype=torch.float64)
    out.backward(grad)
    assert torch.equal(value.grad, grad * mask)
    assert torch.autograd.gradcheck(masked, (value,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(masked, (value,))


def test_sparsity_counts_and_vmap():
    masks = {"a": torch.tensor([True, False, False, True]), "b": torch.zeros(2, 3)}
    report = fp.sparsity(masks)
    assert report.total == 10 and int(report.pruned) == 8 and float(report.fraction) == pytest.approx(0.8)
    assert float(report.per_leaf["a"]) == 0.5 and float(report.per_leaf["b"]) == 1.0
    with_params = fp.sparsity(masks, {"a": torch.ones(4), "b": torch.ones(2, 3), "c": torch.ones(10)})
    assert with_params.total == 20 and float(with_params.fraction) == pytest.approx(0.4)
    stacked = {"a": torch.rand(5, 4) > 0.5, "b": torch.rand(5, 2, 3) > 0.5}
    fractions = torch.func.vmap(lambda m: fp.sparsity(m).fraction)(stacked)
    for i in range(5):
        assert fractions[i] == fp.sparsity({n: m[i] for n, m in stacked.items()}).fraction


# --- one tree driver, and every returned mask has its param's shape ---


def _tree_functions():
    """Every per-leaf tree function, as ``(label, fn(params, masks, include))``."""
    return [
        ("prune", lambda p, m, inc: fp.prune(p, fp.l1_unstructured, 0.5, masks=m, include=inc)),
        ("global_unstructured", lambda p, m, inc: fp.global_unstructured(p, 0.5, masks=m, include=inc)),
        ("prune_channels", lambda p, m, inc: fp.patterns.prune_channels(p, 1, masks=m, include=inc)),
        (
            "prune_by",
            lambda p, m, inc: fp.distributions.prune_by(p, fp.l1_unstructured, {n: 0.5 for n in inc}, masks=m),
        ),
        ("set_update", lambda p, m, inc: fp.dst.set_update(p, {**{n: p[n] != 0 for n in inc}, **m}, 0.5, include=inc)),
    ]


@pytest.mark.parametrize("label, fn", _tree_functions(), ids=[label for label, _ in _tree_functions()])
def test_a_wrong_shaped_mask_of_an_unselected_leaf_raises(label, fn):
    # prune(..., masks={"b": <wrong shape>}, include=["a"]) refuses the wrong mask, never passes it through.
    params = params_of(mlp())
    bad = {"2.weight": torch.ones(3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"^2\.weight: mask has shape \(3,\) but the param has shape \(16, 20\)"):
        fn(params, bad, ["0.weight"])
    with pytest.raises(TypeError, match=r"^2\.weight: mask must be a tensor, got float"):
        fn(params, {"2.weight": 1.0}, ["0.weight"])
    good = fn(params, {"2.weight": torch.ones(16, 20, dtype=torch.bool)}, ["0.weight"])
    assert all(good[n].shape == params[n].shape for n in good)


@pytest.mark.parametrize(
    "label, fn",
    [
        ("prune", lambda p: fp.prune(p, fp.ln_structured, 1, 2, 5, include=["0.weight"])),
        ("prune_channels", lambda p: fp.patterns.prune_channels(p, 1, dim=5, include=["0.weight"])),
        ("prune_by", lambda p: fp.distributions.prune_by(p, fp.ln_structured, {"0.weight": 1}, 2, 5)),
    ],
)
def test_the_driver_names_the_leaf_and_keeps_the_exception_type(label, fn):
    with pytest.raises(IndexError, match=r"^0\.weight: "):
        fn(params_of(mlp()))


def test_dst_errors_go_through_the_same_driver():
    params = params_of(mlp())
    masks = {"0.weight": torch.ones(20, 12, dtype=torch.bool)}
    with pytest.raises(KeyError, match=r"0\.weight: .*no gradient for 0\.weight"):
        fp.dst.rigl_update(params, masks, {"2.weight": torch.ones(16, 20)}, 0.5)
    with pytest.raises(ValueError, match=r"^0\.weight: mask has shape"):
        fp.dst.set_update(params, {"0.weight": torch.ones(12, 20, dtype=torch.bool)}, 0.5)


@pytest.mark.parametrize(
    "value_dtype, mask_dtype",
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32), (torch.float32, torch.float32)],
)
@pytest.mark.parametrize("value_grad", [True, False])
def test_gradients_reach_a_float_mask_of_another_dtype(value_dtype, mask_dtype, value_grad):
    # eager autograd gives the mask its gradient also when its dtype differs from the param's.
    torch.manual_seed(0)
    value = torch.randn(4, 6).to(value_dtype)
    mask = torch.rand(4, 6, dtype=mask_dtype)
    weight = torch.randn(4, 6).to(value_dtype)

    def loss(v, m):
        return (fp.apply_masks({"w": v}, {"w": m})["w"] * weight).sum()

    def reference(v, m):
        return (v * m.to(v.dtype) * weight).sum()

    v, m = value.clone().requires_grad_(value_grad), mask.clone().requires_grad_()
    loss(v, m).backward()
    v_ref, m_ref = value.clone().requires_grad_(value_grad), mask.clone().requires_grad_()
    reference(v_ref, m_ref).backward()
    argnums = (0, 1) if value_grad else 1
    functorch = torch.func.grad(loss, argnums=argnums)(value, mask)
    functorch_mask = functorch[1] if value_grad else functorch
    assert m.grad is not None and m.grad.dtype == mask_dtype
    assert torch.equal(m.grad, m_ref.grad) and torch.equal(functorch_mask, m_ref.grad)
    if value_grad:
        assert torch.equal(v.grad, v_ref.grad) and torch.equal(functorch[0], v_ref.grad)


@pytest.mark.parametrize(
    "tree",
    [
        {"x.y": torch.ones(2), "x": {"y": torch.zeros(2)}},
        {0: torch.ones(2), "0": torch.zeros(2)},
        {"a": [torch.ones(2)], "a.0": torch.zeros(2)},
    ],
    ids=["dotted-vs-nested", "int-vs-str", "list-vs-dotted"],
)
def test_leaf_names_that_collide_raise(tree, tmp_path):
    # two leaves with one name would share a mask (and save_masks would keep one): refused.
    from funcprune import _pytree

    with pytest.raises(ValueError, match="leaf names collide"):
        _pytree.named_leaves(tree)
    with pytest.raises(ValueError, match="leaf names collide"):
        fp.prune(tree, fp.l1_unstructured, 1)
    with pytest.raises(ValueError, match="leaf names collide"):
        fp.export.save_masks(_as_masks(tree), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="leaf names collide"):
        fp.sparsity(_as_masks(tree))


def _as_masks(tree):
    if isinstance(tree, dict):
        return {k: _as_masks(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_as_masks(v) for v in tree]
    return tree != 0


def test_distinct_names_still_work_with_int_and_nested_keys():
    tree = {0: torch.tensor([1.0, 2.0]), "x": {"y": torch.tensor([3.0, 0.5])}}
    masks = fp.prune(tree, fp.l1_unstructured, 1)
    assert torch.equal(masks[0], torch.tensor([False, True]))
    assert torch.equal(masks["x"]["y"], torch.tensor([True, False]))


def test_sparsity_of_stacked_masks_is_per_subnetwork():
    # K stacked masks over a param: the fraction of each subnetwork, never over 1.
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    p = dict(lin.named_parameters())
    masks = fp.masks_for_seeds(p, fp.random_unstructured, 3, 0.5, include=["weight"])
    report = fp.sparsity(masks, p)
    assert report.fraction.shape == (3,) and report.pruned.shape == (3,) and report.total == 10
    for k, one in enumerate(fp.unstack(masks)):
        alone = fp.sparsity(one, p)
        assert float(report.fraction[k]) == float(alone.fraction) == pytest.approx(4 / 10)
        assert int(report.pruned[k]) == int(alone.pruned) == 4
        assert float(report.per_leaf["weight"][k]) == float(alone.per_leaf["weight"]) == 0.5
    mixed = fp.sparsity({"weight": masks["weight"], "bias": torch.tensor([False, True])}, p)
    assert mixed.per_leaf["bias"].shape == (3,) and torch.equal(mixed.pruned, torch.tensor([5, 5, 5]))


def test_sparsity_rejects_wrong_shapes_and_non_tensors():
    params = {"w": torch.zeros(4, 6), "b": torch.zeros(6)}
    with pytest.raises(ValueError, match=r"^w: mask has shape \(3, 4, 5\) but the param has shape \(4, 6\)"):
        fp.sparsity({"w": torch.ones(3, 4, 5, dtype=torch.bool)}, params)
    with pytest.raises(ValueError, match=r"^w: mask has shape \(6,\)"):
        fp.sparsity({"w": torch.ones(6, dtype=torch.bool)}, params)
    with pytest.raises(ValueError, match=r"^b: 2 stacked masks, but 'w' has 3"):
        fp.sparsity({"w": torch.ones(3, 4, 6), "b": torch.ones(2, 6)}, params)
    # a non-tensor leaf is a TypeError naming it
    with pytest.raises(TypeError, match=r"^w: mask must be a tensor, got str"):
        fp.sparsity({"w": "all"})
    with pytest.raises(TypeError, match=r"^w: mask must be a tensor, got float"):
        fp.sparsity({"w": 1.0}, params)
    with pytest.raises(TypeError, match=r"^b: param must be a tensor, got int"):
        fp.sparsity({"w": torch.ones(4, 6)}, {"w": torch.zeros(4, 6), "b": 3})


def test_apply_masks_and_mask_grads_name_a_non_tensor_mask():
    # a non-tensor mask is a TypeError naming it
    params = {"w": torch.ones(3), "b": torch.ones(2)}
    with pytest.raises(TypeError, match=r"^w: mask must be a tensor, got str"):
        fp.apply_masks(params, {"w": "keep"})
    with pytest.raises(TypeError, match=r"^b: mask must be a tensor, got int"):
        fp.mask_grads(params, {"b": 1})
    with pytest.raises(ValueError, match=r"^b: mask has shape \(3,\) but the grad has shape \(2,\)"):
        fp.mask_grads(params, {"b": torch.ones(3)})


def test_sparsity_on_meta():
    meta = {"w": torch.empty(3, 4, 6, dtype=torch.bool, device="meta")}
    report = fp.sparsity(meta, {"w": torch.empty(4, 6, device="meta")})
    assert report.fraction.shape == (3,) and report.fraction.device.type == "meta"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_random_on_top_of_masks_gives_torchs_mask_for_the_same_seed(seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(300, 200), nn.Linear(200, 50))
    params = {name: p.detach().clone() for name, p in net.named_parameters() if name.endswith("weight")}
    torch_prune.l1_unstructured(net[0], "weight", 0.3)
    masks = {"0.weight": net[0].weight_mask.bool()}
    torch.manual_seed(100 + seed)
    torch_prune.global_unstructured(
        [(net[0], "weight"), (net[1], "weight")], torch_prune.RandomUnstructured, amount=0.4
    )
    torch.manual_seed(100 + seed)
    got = fp.global_unstructured(params, 0.4, masks=masks, method="random")
    assert torch.equal(got["0.weight"], net[0].weight_mask.bool())
    assert torch.equal(got["1.weight"], net[1].weight_mask.bool())


def test_forward_mode_tangent_of_a_float_mask_reaches_the_masked_params():
    import torch.autograd.forward_ad as fwAD

    w = torch.randn(5, requires_grad=True)  # the eager lean product's path
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    tangent = torch.linspace(-1, 1, 5, dtype=torch.float64)
    with fwAD.dual_level():
        out = fp.apply_masks({"w": w}, {"w": fwAD.make_dual(mask, tangent)})["w"]
        got = fwAD.unpack_dual(out).tangent
    assert torch.allclose(got, w.detach() * tangent.float())


def _lowest_index_oracle(keys: list, alive: list, k: int) -> list:
    """Reference: drop the k smallest alive |keys| of the leaves joined in order, ties to the lowest index."""
    flat = torch.cat([key.abs().double().reshape(-1) for key in keys])
    live = torch.cat(
        [torch.ones(key.numel(), dtype=torch.bool) if a is None else a.reshape(-1) for key, a in zip(keys, alive)]
    )
    order = torch.sort(torch.where(live, flat, torch.inf), stable=True).indices[:k]
    keep = live.clone()
    keep[order] = False
    return [piece.view(key.shape) for piece, key in zip(keep.split([key.numel() for key in keys]), keys)]


@pytest.mark.parametrize("prior", [False, True])
def test_global_l1_on_plain_tensors_is_the_backends_global_cut_ties_to_the_lowest_index(monkeypatch, prior):
    """Rule: eager global L1 has one selection path, the backend's global cut (the same one DTensors
    take), and on plain tensors it drops ties at the cut at the lowest index in leaf order."""
    from funcprune import _backend

    calls = []
    real = _backend.global_select
    monkeypatch.setattr(_backend, "global_select", lambda *a, **kw: calls.append(kw["method"]) or real(*a, **kw))
    g = torch.Generator().manual_seed(0)
    params = {
        "a": torch.randint(-3, 4, (40, 7), generator=g).float(),
        "b": torch.randint(-3, 4, (33,), generator=g).float(),
    }
    masks = {"a": torch.rand(40, 7, generator=g) > 0.3} if prior else None
    alive = sum(p.numel() for p in params.values()) - (int((~masks["a"]).sum()) if prior else 0)
    for amount in (0.0, 0.35, 0.8, 1.0, 17):
        got = fp.global_unstructured(params, amount, masks=masks, chunk_size=50)
        k = amount if isinstance(amount, int) else round(amount * alive)
        want = _lowest_index_oracle(list(params.values()), [None if masks is None else masks["a"], None], k)
        assert torch.equal(got["a"], want[0]) and torch.equal(got["b"], want[1]), amount
    assert calls == ["l1"] * 5
