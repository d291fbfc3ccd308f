"""funcprune.from_module / to_module / functional_call on pruned modules, with compat and with torch."""

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as T
from test_compat import LeNet, assert_same, layout

import funcprune as fp
import funcprune.compat as C


def _pruned(P, seed=0):
    torch.manual_seed(seed)
    model = LeNet()
    P.l1_unstructured(model.conv1, "weight", 0.4)
    P.ln_structured(model.conv2, "weight", 0.25, 2, 0)
    P.l1_unstructured(model.fc1, "weight", 0.5)
    P.random_unstructured(model.fc3, "bias", 3)
    return model


@pytest.mark.parametrize("P", [C, T], ids=["compat", "torch"])
def test_from_module_reads_original_names(P):
    model = _pruned(P)
    params, masks = fp.from_module(model)
    assert set(params) == {n for n, _ in LeNet().named_parameters()}
    assert list(masks) == [n for n in params if n in ("conv1.weight", "conv2.weight", "fc1.weight", "fc3.bias")]
    assert params["fc1.weight"] is model.fc1.weight_orig and params["fc2.weight"] is model.fc2.weight
    for name, mask in masks.items():
        sub, local = name.rsplit(".", 1)
        assert mask.dtype == torch.bool and torch.equal(mask, getattr(model, sub)._buffers[local + "_mask"] != 0)


@pytest.mark.parametrize("P", [C, T], ids=["compat", "torch"])
def test_functional_call_on_a_pruned_module_runs_the_given_params_and_masks(P):
    model = _pruned(P)
    plain = LeNet()
    params, masks = fp.from_module(model)
    plain.load_state_dict({n: p.detach() for n, p in params.items()})
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(fp.functional_call(model, params, (x,), masks=masks), model(x))
    new_params = {n: torch.randn_like(p) for n, p in params.items()}
    new_masks = {n: torch.rand(m.shape) > 0.5 for n, m in masks.items()}
    want = fp.functional_call(plain, new_params, (x,), masks=new_masks)
    assert torch.allclose(fp.functional_call(model, new_params, (x,), masks=new_masks), want, atol=1e-6)
    # missing names come from the module: its own mask for conv1.weight
    some = {k: v for k, v in new_masks.items() if k != "conv1.weight"}
    both = dict(some, **{"conv1.weight": masks["conv1.weight"]})
    assert torch.allclose(
        fp.functional_call(model, new_params, (x,), masks=some),
        fp.functional_call(plain, new_params, (x,), masks=both),
        atol=1e-6,
    )
    # gradients reach the dense param, zero where pruned
    grads = torch.func.grad(lambda p: fp.functional_call(model, p, (x,), masks=masks).sum())(params)
    assert torch.all(grads["fc1.weight"][~masks["fc1.weight"]] == 0)


def test_functional_call_vmaps_over_stacked_masks_and_leaks_nothing():
    model = _pruned(C)
    params, masks = fp.from_module(model)
    x = torch.randn(2, 1, 28, 28)
    before = model.fc1.weight
    stacked = torch.stack([masks["fc1.weight"], torch.ones_like(masks["fc1.weight"])])
    out = torch.func.vmap(lambda m: fp.functional_call(model, params, (x,), masks={"fc1.weight": m}))(stacked)
    assert torch.allclose(out[0], model(x), atol=1e-6)
    full = dict(masks)
    full.pop("fc1.weight")
    assert torch.allclose(out[1], fp.functional_call(model, params, (x,), masks={**full, "fc1.weight": stacked[1]}))
    assert model.fc1.weight is not None and type(model.fc1.__dict__["weight"]) is torch.Tensor
    assert torch.equal(model.fc1.__dict__["weight"], before)


def test_functional_call_errors_on_pruned_modules():
    model = _pruned(C)
    params, masks = fp.from_module(model)
    with pytest.raises(KeyError, match="nope"):
        fp.functional_call(model, params, (torch.randn(1, 1, 28, 28),), masks={"nope": torch.ones(1)})
    with pytest.raises(ValueError, match="fc1.weight"):
        fp.functional_call(model, params, (), masks={"fc1.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="_orig"):
        fp.functional_call(model, {"fc1.weight": params["fc1.weight"], "fc1.weight_orig": params["fc1.weight"]})


@pytest.mark.parametrize("P", [C, T], ids=["compat", "torch"])
def test_to_module_gives_torchs_layout_and_state_dicts_cross_both_ways(P):
    source = _pruned(P)
    params, masks = fp.from_module(source)
    target = fp.to_module(LeNet(), params, masks)
    reference = LeNet()
    reference.load_state_dict({n: p.detach() for n, p in params.items()})
    for name, _ in list(reference.named_parameters()):  # torch, pruning in named_parameters() order
        if name in masks:
            sub, local = name.rsplit(".", 1)
            T.custom_from_mask(getattr(reference, sub), local, masks[name])
    x = torch.randn(2, 1, 28, 28)
    assert_same(target, reference, x)
    assert torch.equal(target(x), source(x))
    # state dicts cross both ways, strict
    reference.load_state_dict(target.state_dict(), strict=True)
    target.load_state_dict(reference.state_dict(), strict=True)
    other = _pruned(T if P is C else C, seed=1)
    other.load_state_dict(source.state_dict(), strict=True)
    source.load_state_dict(other.state_dict(), strict=True)
    assert torch.equal(other(x), source(x))


def test_to_module_updates_and_unprunes_in_place():
    model = _pruned(C)
    params, masks = fp.from_module(model)
    ids = {n: id(p) for n, p in params.items()}
    new_mask = torch.zeros_like(masks["conv1.weight"])
    masks2 = {"conv1.weight": new_mask, "fc2.bias": torch.tensor([True] * 80 + [False] * 4)}
    fp.to_module(model, {"fc1.weight": torch.ones(120, 400)}, masks2)
    params2, got = fp.from_module(model)
    assert {n: id(p) for n, p in params2.items()} == ids
    assert list(got) == ["conv1.weight", "fc2.bias"] and not got["conv1.weight"].any()
    assert torch.equal(model.fc1.weight, torch.ones(120, 400)) and type(model.fc1) is nn.Linear
    assert not model.conv2._forward_pre_hooks and "conv2.weight" in dict(model.named_parameters())
    assert torch.equal(model.conv1.weight, torch.zeros_like(model.conv1.weight))


def test_to_module_validates_before_changing_anything():
    model = _pruned(C)
    before = layout(model)
    with pytest.raises(KeyError):
        fp.to_module(model, masks={"fc9.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="fc2.weight"):
        fp.to_module(model, masks={"fc2.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="fc2.weight"):
        fp.to_module(model, {"fc2.weight": torch.ones(3)})
    # a str mask is a TypeError naming it
    with pytest.raises(TypeError, match=r"^fc2\.weight: mask must be a tensor, got str"):
        fp.to_module(model, masks={"fc1.weight": torch.ones(120, 400, dtype=torch.bool), "fc2.weight": "all"})
    with pytest.raises(TypeError, match=r"^fc2\.bias: param must be a tensor, got float"):
        fp.to_module(model, {"fc2.bias": 1.0})
    assert layout(model) == before


def test_round_trip_and_core_masks(device):
    torch.manual_seed(0)
    model = LeNet().to(device)
    params = {n: p.detach() for n, p in model.named_parameters()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=lambda n, p: n.endswith("weight"))
    fp.to_module(model, params, masks)
    assert model.fc1.weight_mask.device.type == device.type
    back_params, back_masks = fp.from_module(model)
    assert list(back_masks) == list(masks)
    assert all(torch.equal(back_masks[n], masks[n]) for n in masks)
    x = torch.randn(2, 1, 28, 28, device=device)
    assert torch.allclose(model(x), fp.functional_call(LeNet().to(device), params, (x,), masks=masks), atol=1e-6)


def test_to_module_rejects_unreadable_tensors_before_changing_anything():
    lin = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in lin.state_dict().items()}
    with pytest.raises(ValueError, match=r"weight: mask must be a real tensor"):
        fp.to_module(lin, {"bias": torch.zeros(2)}, {"weight": torch.ones(2, 3, dtype=torch.bool, device="meta")})
    assert list(lin.state_dict()) == list(before)
    assert all(torch.equal(lin.state_dict()[k], v) for k, v in before.items())


def test_to_module_writes_torchs_hook_and_the_module_still_copies_and_pickles():
    """Rule: to_module writes torch's own layout (torch's CustomFromMask hook, the mask buffer in the
    param's dtype) without compat, and the module keeps its class, deep-copies and pickles."""
    import copy
    import io
    import pickle

    model = fp.to_module(LeNet(), masks={"fc1.weight": torch.rand(120, 400) > 0.5})
    hook = next(iter(model.fc1._forward_pre_hooks.values()))
    assert type(hook) is T.CustomFromMask and hook.mask is model.fc1.weight_mask
    reference = T.custom_from_mask(nn.Linear(400, 120), "weight", model.fc1.weight_mask.bool())
    assert torch.equal(model.fc1.weight_mask, reference.weight_mask) and type(model.fc1) is nn.Linear
    x = torch.randn(2, 1, 28, 28)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for new in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buffer, weights_only=False)):
        assert torch.equal(new(x), model(x)) and type(new.fc1) is nn.Linear
    C.l1_unstructured(model.fc1, "weight", 10)  # compat prunes on top of torch's hook, as for torch's modules
    assert int((model.fc1.weight_mask == 0).sum()) == int((reference.weight_mask == 0).sum()) + 10
    C.remove(model.fc1, "weight")
    assert "__reduce_ex__" not in model.fc1.__dict__


@pytest.mark.slow
def test_to_module_refuses_a_mask_for_a_dtensor_param_before_changing_anything():
    """Rule: torch's layout (a full-size mask buffer and hook) cannot sit on a sharded param: to_module
    raises TypeError naming the leaf and leaves the module as it was."""
    import subprocess
    import sys

    code = """
import os, torch, torch.distributed as dist
from torch.distributed.tensor import DeviceMesh, Shard, distribute_tensor
import funcprune as fp
dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
try:
    lin = torch.nn.Linear(4, 2)
    lin.weight = torch.nn.Parameter(distribute_tensor(lin.weight.detach(), DeviceMesh("cpu", [0]), [Shard(0)]))
    before = list(lin.state_dict())
    try:
        fp.to_module(lin, masks={"weight": torch.ones(2, 4, dtype=torch.bool)})
    except TypeError as err:
        assert str(err).startswith("weight: the parameter is a DTensor"), err
    else:
        raise AssertionError("no error")
    assert list(lin.state_dict()) == before and not lin._forward_pre_hooks
finally:
    dist.destroy_process_group()
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
