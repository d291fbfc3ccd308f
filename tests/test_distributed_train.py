"""Training pruned models under FSDP2 and DDP on real gloo ranks matches the single-process oracle.

Two launches: 2 ranks (FSDP2 functional and plain loops, the FSDP2 misuse checks, DDP) and 4 ranks
(FSDP2 on a 1-D mesh with an empty shard, and a 2x2 HSDP mesh). Each rank computes the
single-process oracle itself (tests/_dist_train.py); the tests here assert what the ranks measured.
The helpers of funcprune.distributed also get plain-tensor tests, without a process group.
"""

import copy

import _dist_train as W
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _dist import run_ranks

import funcprune as fp
import funcprune.distributed as fpd

TOL = 1e-5


@pytest.fixture(scope="module")
def two():
    return run_ranks(W.two_ranks, 2)


@pytest.fixture(scope="module")
def four():
    return run_ranks(W.four_ranks, 4)


def _check_training(res, kind):
    assert res[f"{kind}_zero_after_every_step"]  # after EVERY optimizer step, every rank
    assert res[f"{kind}_masks_equal"]  # the single-process masks, bit for bit
    assert res[f"{kind}_mask_placements"]  # bool DTensors with the params' placements
    assert res[f"{kind}_max_loss_diff"] < TOL  # the single-process losses
    assert res[f"{kind}_max_param_diff"] < TOL  # and params
    assert abs(res[f"{kind}_final_sparsity"] - W.SCHEDULE(W.END)) < 1e-3
    updates = res[f"{kind}_forward_diffs"]
    assert len(updates) == 3
    # FSDP2's forward is the single-process masked model's, which differs from the dense one once pruned
    assert all(masked < TOL for masked, _ in updates)
    assert all(dense > 1e-3 for _, dense in updates[1:])


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
@pytest.mark.parametrize("kind", ["plain", "functional"])
def test_fsdp2_training_two_ranks(two, kind):
    for res in two:
        fsdp = res["fsdp"]
        assert set(fsdp["placements"].values()) == {"(Shard(dim=0),)"}
        _check_training(fsdp, kind)
    assert [r["fsdp"]["local_rows"]["3.weight"] for r in two] == [5, 4]  # uneven shards
    assert all(r["fsdp"][f"{kind}_local_pruned"] > 0 for r in two)


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_fsdp2_training_four_ranks_empty_shard_and_hsdp(four):
    for res in four:
        _check_training(res["fsdp"], "plain")
        _check_training(res["hsdp"], "functional")
        assert set(res["hsdp"]["placements"].values()) == {"(Replicate(), Shard(dim=0))"}
    assert [r["fsdp"]["local_rows"]["5.weight"] for r in four] == [1, 1, 1, 0]  # rank 3 holds nothing
    assert four[3]["fsdp"]["plain_local_pruned"] == 0


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_functional_call_refuses_fsdp2_modules(two):
    for res in two:
        m = res["misuse"]
        for key in (
            "functional_call_lazyFalse",
            "functional_call_lazyTrue",
            "functional_call_sub_lazyFalse",
            "functional_call_sub_lazyTrue",
        ):
            assert "FSDP2" in m[key] and "silently ignored" in m[key], key
        assert "FSDPSequential" in m["functional_call_lazyTrue"] and "FSDPLinear" in m["functional_call_sub_lazyTrue"]
        # refused before anything changed: a first call before FSDP2's lazy init must not be adopted
        assert m["untouched_lazyFalse"] == 0.0 and m["untouched_lazyTrue"] == 0.0
        # the silent failures behind the refusal (torch.func.functional_call, masks applied by hand):
        # after lazy init the masks are dropped; before it, FSDP2 keeps the masked tensors for good
        assert m["raw_lazyTrue"]["vs_dense"] < TOL and m["raw_lazyTrue"]["vs_masked"] > 1e-3
        assert m["raw_lazyFalse"]["vs_masked"] < TOL and m["raw_lazyFalse"]["later_forward_vs_dense"] > 1e-3


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_compat_on_fsdp2(two):
    for res in two:
        m = res["misuse"]
        assert len(m["compat_sharded"]) == 2
        assert all("cannot prune FSDPLinear.weight: it is a DTensor" in e for e in m["compat_sharded"])
        assert m["compat_untouched"]
        # pruned before fully_shard: right output, but the mask buffer is whole on every rank
        assert m["compat_before_output_diff"] < TOL
        assert m["compat_before_orig_sharded"] and m["compat_before_mask_is_full"]


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_keep_pruned_checks_sharded_masks(two):
    for res in two:
        errors = res["misuse"]["keep_pruned_errors"]
        assert "3.weight: the param is a DTensor but its mask is a plain tensor" in errors["plain mask"]
        assert "3.weight: mask has placements (Replicate(),) but the param has (Shard(dim=0),)" in errors["placements"]
        assert res["misuse"]["keep_pruned_untouched"] == 0.0


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
@pytest.mark.parametrize("case", ["before_wrap", "before_wrap_rank_seeds", "after_wrap_broadcast"])
def test_ddp_compat(two, case):
    for res in two:
        d = res["ddp"]
        assert d[f"{case}_same_on_ranks"]  # every param and mask identical across ranks
        assert d[f"{case}_keys"] and d[f"{case}_masks_equal_ref"]
        assert d[f"{case}_max_state_diff"] < TOL and d[f"{case}_max_loss_diff"] < TOL


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_ddp_averages_weight_orig_grads(two):
    for res in two:
        d = res["ddp"]
        assert "0.weight_orig" in d["before_wrap_grad_names"] and "0.weight" not in d["before_wrap_grad_names"]
        assert d["before_wrap_max_grad_diff"] < TOL  # each rank's grad is the full-batch single-process grad
        assert d["before_wrap_masks_resent_every_forward"]  # DDP's default buffer sync: the documented cost


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_ddp_prune_after_wrapping(two):
    for res in two:
        d = res["ddp"]
        assert d["after_wrap_params_are_ddps"]  # compat moves the same Parameter: DDP's reducer still holds it
        assert d["after_wrap_masks_diverged"]  # per-rank seeds after wrapping: diverged until broadcast_masks_


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_ddp_functional_path(two):
    for res in two:
        d = res["ddp"]
        assert d["functional_same_on_ranks"] and d["functional_masks_equal_ref"] and d["functional_zero"]
        assert d["functional_max_param_diff"] < TOL and d["functional_max_loss_diff"] < TOL
        for key in ("ddp_detached_error", "ddp_func_grad_error"):
            assert "needs its own parameters" in d[key] and "module.0.weight" in d[key]
        assert d["ddp_detached_no_grad_ok"]


# --- funcprune.distributed on plain tensors (one process) ---


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
    ],
)
def test_keep_pruned_keeps_zeros_and_matches_the_functional_loop(make_opt):
    model = _model()
    params = dict(model.named_parameters())
    opt = make_opt(model.parameters())
    for _ in range(2):  # dense steps first: momentum and Adam's moments are non-zero where pruning lands
        F.mse_loss(model(torch.randn(5, 6)), torch.randn(5, 3)).backward()
        opt.step()
        opt.zero_grad()
    masks = fp.global_unstructured(
        {n: p.detach() for n, p in params.items()}, 0.6, include=lambda n, p: n.endswith("weight")
    )
    twin = _model()
    twin.load_state_dict(model.state_dict())
    twin_opt = make_opt(twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the buffers
    keeper = fpd.keep_pruned(opt, params, masks)
    assert keeper.masks is masks
    torch.manual_seed(1)
    data = [(torch.randn(5, 6), torch.randn(5, 3)) for _ in range(4)]
    twin_params = dict(twin.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            twin_params[n].mul_(m)
    for x, y in data:
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        for n, m in masks.items():
            assert bool((params[n][~m] == 0).all()), n
        # the same step by hand: masked forward (so masked grads), a step, masked params
        F.mse_loss(fp.functional_call(twin, twin_params, (x,), masks=masks), y).backward()
        twin_opt.step()
        twin_opt.zero_grad()
        with torch.no_grad():
            for n, m in masks.items():
                twin_params[n].mul_(m)
        for n in params:
            assert torch.allclose(params[n], twin_params[n], atol=1e-6), n
    keeper.remove()
    F.mse_loss(model(data[0][0]), data[0][1]).backward()
    opt.step()
    assert not all(bool((params[n][~m] == 0).all()) for n, m in masks.items())  # hooks gone


def test_keep_pruned_update_applies_now_and_checks_first():
    model = _model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    keeper = fpd.keep_pruned(opt, params)
    assert keeper.masks is None
    x = torch.randn(3, 6)
    masks = fp.prune({n: p.detach() for n, p in params.items()}, fp.l1_unstructured, 0.5, include=["0.weight"])
    expected = fp.functional_call(_model(), {}, (x,), masks=masks)
    keeper.update(masks)  # the next forward is masked, before any step
    assert torch.allclose(model(x), expected)
    before = {n: p.detach().clone() for n, p in params.items()}
    with pytest.raises(ValueError, match=r"2\.weight: mask has shape \(3, 3\) but the param has shape \(3, 8\)"):
        keeper.update({"0.weight": masks["0.weight"], "2.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="nope"):
        keeper.update({"nope": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(ValueError, match="0.weight: not a parameter of the optimizer"):
        fpd.keep_pruned(opt, {n: p.detach() for n, p in params.items()}, masks)
    assert keeper.masks is masks and all(torch.equal(before[n], p) for n, p in params.items())


def test_apply_masks_and_mask_grads_in_place():
    w = nn.Parameter(torch.tensor([[1.0, float("inf")], [float("nan"), -2.0]]))
    mask = torch.tensor([[True, False], [False, True]])
    assert fpd.apply_masks_({"w": w}, {"w": mask})["w"] is w
    assert w.data.tolist() == [[1.0, 0.0], [0.0, -2.0]]  # exact zeros, even for inf/NaN
    (w * torch.tensor([[2.0, 3.0], [4.0, 5.0]])).sum().backward()
    fpd.mask_grads_({"w": w}, {"w": mask.float()})  # a float 0/1 mask too
    assert w.grad.tolist() == [[2.0, 0.0], [0.0, 5.0]]
    b = nn.Parameter(torch.ones(2))  # no grad: skipped
    fpd.mask_grads_({"w": w, "b": b}, {"b": torch.tensor([True, False])})
    assert fpd.apply_masks_({"w": w}, None)["w"] is w
    with pytest.raises(TypeError, match="w: mask must be a tensor"):
        fpd.apply_masks_({"w": w}, {"w": "all"})


def test_keep_pruned_mask_grads_before_clipping():
    w = nn.Parameter(torch.tensor([3.0, 4.0, 12.0]))
    opt = torch.optim.SGD([w], lr=1.0)
    keeper = fpd.keep_pruned(opt, {"w": w}, {"w": torch.tensor([True, True, False])})
    (w * torch.tensor([3.0, 4.0, 12.0])).sum().backward()
    keeper.mask_grads()  # the pruned gradient is zero before clipping reads it
    assert w.grad.tolist() == [3.0, 4.0, 0.0]
    assert float(torch.nn.utils.clip_grad_norm_([w], 1.0)) == 5.0
    opt.step()
    assert w.detach().tolist()[2] == 0.0
