"""Rank workers of tests/test_distributed_train.py: training pruned models under FSDP2 and DDP.

Every worker runs the single-process oracle itself (the same loop on an unsharded copy of the
model, the full batch, plain masks: cheap at this size) and compares its own shards and losses with
it, so nothing is hand-typed and no full tensor has to travel except where a check reads one.
Workers raise on a broken invariant and return a dict of what they measured for the test to assert.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor

import funcprune as fp
import funcprune.compat as prune
import funcprune.distributed as fpd
from funcprune.schedules import amount_between, is_update_step, polynomial

STEPS, BEGIN, END, EVERY = 7, 0, 4, 2  # masks change at steps 0, 2, 4
SCHEDULE = polynomial(0.75, begin=BEGIN, end=END, every=EVERY)
LOCAL_BATCH, LR = 4, 0.1


def make_model() -> nn.Module:
    """A small CNN+MLP whose dims (6, 9, 3 rows) leave uneven shards on 2 ranks and an empty one on 4."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 9), nn.ReLU(), nn.Linear(9, 3)
    )


WEIGHTS = ["0.weight", "3.weight", "5.weight"]


def batch(step: int, world: int, rank=None):
    """The full batch of ``step`` for ``world`` ranks (LOCAL_BATCH each), or rank ``rank``'s slice of it."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(LOCAL_BATCH * world, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (LOCAL_BATCH * world,), generator=g)
    return (x, y) if rank is None else (x.chunk(world)[rank], y.chunk(world)[rank])


def local(t):
    return t.to_local() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, param) -> torch.Tensor:
    """``full`` as a DTensor with ``param``'s mesh and placements, each rank slicing its own part."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)


def full(t: torch.Tensor) -> torch.Tensor:
    if not isinstance(t, DTensor):
        return t.detach()
    return t.to(torch.uint8).full_tensor().bool() if t.dtype == torch.bool else t.detach().full_tensor()


def select(params, step, masks):
    """The gradual global-pruning step: the survivor amount that reaches SCHEDULE(step), L1 over the weights."""
    weights = {n: params[n] for n in WEIGHTS}
    amount = amount_between(fp.sparsity(masks or {}, weights), float(SCHEDULE(step)))
    return fp.global_unstructured(params, amount, masks=masks, include=WEIGHTS)


def zeros_kept(params, masks) -> bool:
    """Every pruned entry of this rank's shards is exactly 0."""
    return all(bool((local(params[n]).detach()[~local(m)] == 0).all()) for n, m in masks.items())


def maxabs(t: torch.Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def mean_over_ranks(values) -> torch.Tensor:
    """The mean over ranks of each of ``values`` (0-d tensors), in one all-reduce."""
    stacked = torch.stack([v.detach() for v in values])
    dist.all_reduce(stacked)
    return stacked / dist.get_world_size()


def probe_input(step):
    return batch(100 + step, 1)[0]


def plain_loop(model, params, opt, world, rank, select_fn, on_update):
    """(b) ``loss.backward(); opt.step()`` with funcprune.distributed.keep_pruned doing the masking."""
    keeper = fpd.keep_pruned(opt, params)
    losses, zero_ok = [], []
    for step in range(STEPS):
        if is_update_step(step, BEGIN, END, EVERY):
            new = select_fn(params, step, keeper.masks)
            on_update(step, new)
            keeper.update(new)
        x, y = batch(step, world, rank)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
        zero_ok.append(zeros_kept(params, keeper.masks))
    keeper.remove()
    return losses, keeper.masks, zero_ok


def functional_loop(model, params, world, rank, select_fn, on_update):
    """(a) grads as a tree, a functional masked update (pruned="zero"), written back into the params."""
    masks, losses, zero_ok = None, [], []
    for step in range(STEPS):
        if is_update_step(step, BEGIN, END, EVERY):
            masks = select_fn(params, step, masks)
            on_update(step, masks)
            fpd.apply_masks_(params, masks)
        x, y = batch(step, world, rank)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        grads = fp.mask_grads({n: p.grad for n, p in params.items()}, masks)
        current = {n: p.detach() for n, p in params.items()}
        updated = fp.masked_update(current, {n: current[n] - LR * grads[n] for n in current}, masks, pruned="zero")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(updated[n])
                p.grad = None
        losses.append(loss.detach())
        zero_ok.append(zeros_kept(params, masks))
    return losses, masks, zero_ok


def run_loop(kind, model, params, world, rank, select_fn, on_update):
    if kind == "plain":
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=0.01)
        return plain_loop(model, params, opt, world, rank, select_fn, on_update)
    return functional_loop(model, params, world, rank, select_fn, on_update)


def reference(kind: str, world: int):
    """The single-process run of the same loop on the full batches, and at each mask update the
    masked model's output (``fp.functional_call`` on the dense params) and the dense one."""
    model = make_model()
    params = dict(model.named_parameters())
    outputs = []

    def on_update(step, new_masks):
        x = probe_input(step)
        with torch.no_grad():
            outputs.append((fp.functional_call(model, params, (x,), masks=new_masks), model(x)))

    losses, masks, zero_ok = run_loop(kind, model, params, world, None, select, on_update)
    assert all(zero_ok)
    return losses, masks, {n: p.detach() for n, p in params.items()}, outputs


def _check_against(tag, losses, masks, params, ref, zero_ok, forwards, out):
    """This rank's shards against the slices of the single-process result: no gather."""
    ref_losses, ref_masks, ref_params, ref_outputs = ref
    out[f"{tag}_zero_after_every_step"] = all(zero_ok) and len(zero_ok) == STEPS
    out[f"{tag}_max_loss_diff"] = float((mean_over_ranks(losses) - torch.stack(ref_losses)).abs().max())
    out[f"{tag}_masks_equal"] = sorted(masks) == sorted(ref_masks) and all(
        torch.equal(local(masks[n]), local(shard_like(ref_masks[n], params[n]))) for n in ref_masks
    )
    out[f"{tag}_mask_placements"] = all(
        isinstance(masks[n], DTensor)
        and masks[n].dtype == torch.bool
        and masks[n].placements == params[n].placements
        and masks[n].device_mesh == params[n].device_mesh
        for n in masks
    )
    out[f"{tag}_max_param_diff"] = max(
        maxabs(local(p) - local(shard_like(ref_params[n], p))) for n, p in params.items()
    )
    out[f"{tag}_final_sparsity"] = float(fp.sparsity(ref_masks, {n: ref_params[n] for n in WEIGHTS}).fraction)
    out[f"{tag}_local_pruned"] = int(sum(int((~local(m)).sum()) for m in masks.values()))
    # per mask update: |FSDP2 forward - single-process masked forward|, |FSDP2 forward - dense forward|
    out[f"{tag}_forward_diffs"] = [
        (float((got - masked).abs().max()), float((got - dense).abs().max()))
        for got, (masked, dense) in zip(forwards, ref_outputs)
    ]


def fsdp_model(mesh):
    from torch.distributed.fsdp import fully_shard

    model = make_model()
    for i in (0, 3, 5):
        fully_shard(model[i], mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def fsdp_training(rank: int, world: int, mesh_shape=None, kinds=("plain", "functional")) -> dict:
    """Items 4 (a) and (b) on a fully_shard-ed model, plus the masked-forward check at every mask update."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh_shape = mesh_shape or (world,)
    names = ("replicate", "shard") if len(mesh_shape) == 2 else None
    mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
    out = {}
    for kind in kinds:
        ref = reference(kind, world)
        model = fsdp_model(mesh)
        params = dict(model.named_parameters())
        out["placements"] = {n: str(tuple(p.placements)) for n, p in params.items()}
        out["local_rows"] = {n: local(p).shape[0] for n, p in params.items()}
        forwards = []

        def on_update(step, new_masks, model=model, params=params, forwards=forwards):
            # FSDP2's all-gather must carry the masked params: its forward is the single-process
            # masked model's output, not the dense one's
            fpd.apply_masks_(params, new_masks)
            with torch.no_grad():
                forwards.append(model(probe_input(step)))

        losses, masks, zero_ok = run_loop(kind, model, params, world, rank, select, on_update)
        _check_against(kind, losses, masks, params, ref, zero_ok, forwards, out)
    return out


def fsdp_misuse(rank: int, world: int) -> dict:
    """What FSDP2 does to funcprune.functional_call and to compat, and that funcprune refuses or handles it."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    x = batch(200, 1)[0]
    twin = make_model()
    dense = twin(x)
    masks_full = fp.global_unstructured(dict(twin.named_parameters()), 0.5, include=WEIGHTS)

    for lazy in (False, True):  # before FSDP2's lazy init (first forward) and after it
        model = fsdp_model(mesh)
        if lazy:
            with torch.no_grad():
                model(x)
        params = dict(model.named_parameters())
        masks = {n: shard_like(m, params[n]) for n, m in masks_full.items()}
        try:
            fp.functional_call(model, params, (x,), masks=masks)
            out[f"functional_call_lazy{lazy}"] = "no error"
        except TypeError as err:
            out[f"functional_call_lazy{lazy}"] = str(err)
        try:  # a sharded submodule is refused too
            fp.functional_call(model[3], {}, (torch.randn(2, 96),))
            out[f"functional_call_sub_lazy{lazy}"] = "no error"
        except TypeError as err:
            out[f"functional_call_sub_lazy{lazy}"] = str(err)
        with torch.no_grad():
            out[f"untouched_lazy{lazy}"] = float((model(x) - dense).abs().max())  # refused before any change

    # what the refusal prevents, shown with torch.func.functional_call and the masked DTensors
    # swapped in by hand: after FSDP2's lazy init the output is the DENSE model's (masks dropped by
    # the all-gather); before it, FSDP2 adopts the swapped-in products as its parameters for good
    masked_out = fp.functional_call(twin, {}, (x,), masks=masks_full)
    for lazy in (True, False):
        model = fsdp_model(mesh)
        if lazy:
            with torch.no_grad():
                model(x)
        params = dict(model.named_parameters())
        masked = fp.apply_masks(params, {n: shard_like(m, params[n]) for n, m in masks_full.items()})
        with torch.no_grad():
            got = torch.func.functional_call(model, masked, (x,))
            after = model(x)
        out[f"raw_lazy{lazy}"] = {
            "vs_dense": float((got - dense).abs().max()),
            "vs_masked": float((got - masked_out).abs().max()),
            "later_forward_vs_dense": float((after - dense).abs().max()),
        }

    # compat on a sharded param: refused, module untouched
    model = fsdp_model(mesh)
    before = {n: local(t).clone() for n, t in model.state_dict().items()}
    for call in (
        lambda: prune.l1_unstructured(model[3], "weight", 0.5),
        lambda: prune.global_unstructured(
            [(model[3], "weight"), (model[5], "weight")], prune.L1Unstructured, amount=0.5
        ),
    ):
        try:
            call()
            out.setdefault("compat_sharded", []).append("no error")
        except TypeError as err:
            out.setdefault("compat_sharded", []).append(str(err))
    after = model.state_dict()
    out["compat_untouched"] = (
        sorted(after) == sorted(before)
        and all(torch.equal(local(after[n]), t) for n, t in before.items())
        and not prune.is_pruned(model)
    )

    # compat BEFORE fully_shard: correct (FSDP2's hook all-gathers weight_orig before compat's hook
    # multiplies), but the <name>_mask buffer is a full plain tensor on every rank.
    model, twin = make_model(), make_model()
    for m in (model, twin):
        prune.l1_unstructured(m[3], "weight", 0.5)
        prune.ln_structured(m[0], "weight", 0.5, 2, 0)
    for i in (0, 3, 5):
        fully_shard(model[i], mesh=mesh)
    fully_shard(model, mesh=mesh)
    out["compat_before_output_diff"] = float((model(x) - twin(x)).abs().max())
    out["compat_before_mask_is_full"] = (
        not isinstance(model[3].weight_mask, DTensor) and model[3].weight_mask.shape == twin[3].weight_mask.shape
    )
    out["compat_before_orig_sharded"] = isinstance(model[3].weight_orig, DTensor)

    # keep_pruned's checks run before anything changes
    model = fsdp_model(mesh)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    errors = {}
    for what, bad in (
        ("plain mask", {"3.weight": masks_full["3.weight"]}),
        ("placements", {"3.weight": _replicated(masks_full["3.weight"], params["3.weight"])}),
    ):
        try:
            fpd.keep_pruned(opt, params, bad)
            errors[what] = "no error"
        except ValueError as err:
            errors[what] = str(err)
    out["keep_pruned_errors"] = errors
    out["keep_pruned_untouched"] = float((full(params["3.weight"]) - twin_weights()["3.weight"]).abs().max())
    return out


def twin_weights():
    return {n: p.detach() for n, p in make_model().named_parameters()}


def _replicated(mask, param):
    from torch.distributed.tensor import Replicate, distribute_tensor

    return distribute_tensor(mask, param.device_mesh, [Replicate()], src_data_rank=None)


# ---------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------


def _same_on_all_ranks(tensors) -> bool:
    """Whether every rank holds the same values (one broadcast of everything, one all-reduce of the verdict)."""
    mine = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    theirs = mine.clone()
    dist.broadcast(theirs, 0)
    flag = torch.tensor([int(torch.equal(theirs, mine))])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag)


def _ddp_steps(model, ddp, world, rank, steps=4, reprune_at=2, grads_out=None):
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=0.9)
    losses = []
    for step in range(steps):
        if step == reprune_at:  # a second round on an already pruned tensor: no rename, a container
            prune.l1_unstructured(model[3], "weight", 0.3)
        x, y = batch(step, world, rank)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        if grads_out is not None:
            grads_out.append({n: p.grad.clone() for n, p in model.named_parameters()})
        opt.step()
        opt.zero_grad()
        losses.append(loss.detach())
    return list(mean_over_ranks(losses)) if ddp is not model else losses


def _compat_prune(model, seed):
    torch.manual_seed(seed)
    prune.random_unstructured(model[0], "weight", 0.4)
    prune.l1_unstructured(model[3], "weight", 0.5)
    prune.random_structured(model[5], "weight", 0.3, 1)


def ddp_training(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    # single-process oracle: compat with seed 7, full batches
    ref = make_model()
    _compat_prune(ref, 7)
    ref_grads = []
    ref_losses = _ddp_steps(ref, ref, world, None, grads_out=ref_grads)
    ref_state = ref.state_dict()

    def compare(tag, model, losses, grads=None):
        state = model.state_dict()
        out[f"{tag}_same_on_ranks"] = _same_on_all_ranks(state.values())
        out[f"{tag}_keys"] = sorted(state) == sorted(ref_state)
        out[f"{tag}_max_state_diff"] = max(float((state[k].float() - ref_state[k].float()).abs().max()) for k in state)
        out[f"{tag}_masks_equal_ref"] = all(torch.equal(state[k], ref_state[k]) for k in state if k.endswith("_mask"))
        out[f"{tag}_max_loss_diff"] = max(float((a - b).abs()) for a, b in zip(losses, ref_losses))
        if grads is not None:
            out[f"{tag}_max_grad_diff"] = max(
                float((g[n] - r[n]).abs().max()) for g, r in zip(grads, ref_grads) for n in g
            )

    # 1. pruned before wrapping, the same seed on every rank
    model = make_model()
    _compat_prune(model, 7)
    ddp = DDP(model)
    grads = []
    compare("before_wrap", model, _ddp_steps(model, ddp, world, rank, grads_out=grads), grads)
    out["before_wrap_grad_names"] = sorted(grads[0])

    # 2. pruned before wrapping with a different seed per rank: DDP's constructor broadcasts rank 0's
    #    buffers (the masks), so the ranks agree (rank 0's seed is 7)
    model = make_model()
    _compat_prune(model, 7 + rank)
    ddp = DDP(model)
    # ... and, by default, again before every forward: the masks are buffers (in the param's dtype)
    out["before_wrap_masks_resent_every_forward"] = ddp.will_sync_module_buffers() and all(
        f"{i}.weight_mask" in ddp.named_module_buffers for i in (0, 3, 5)
    )
    compare("before_wrap_rank_seeds", model, _ddp_steps(model, ddp, world, rank))

    # 3. pruned AFTER wrapping (the same Parameter moves to weight_orig: the reducer still holds it),
    #    different seeds per rank: the masks diverge silently (DDP only re-broadcasts buffers if the
    #    module had some when wrapped); broadcast_masks_ repairs it
    model = make_model()
    ddp = DDP(model)
    _compat_prune(model, 7 + rank)
    out["after_wrap_masks_diverged"] = not _same_on_all_ranks([b for n, b in model.named_buffers()])
    fpd.broadcast_masks_(model)
    out["after_wrap_params_are_ddps"] = all(any(p is q for q in ddp.parameters()) for p in model.parameters())
    compare("after_wrap_broadcast", model, _ddp_steps(model, ddp, world, rank))

    # 4. the functional path: masks from the tree API (same params on every rank after DDP's broadcast;
    #    random global with a seeded generator), the DDP module called through fp.functional_call with
    #    its own parameters, plain autograd
    out.update(ddp_functional(rank, world))
    return out


def ddp_functional(rank, world):
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}

    def masks_for(params, prefix=""):
        g = torch.Generator().manual_seed(11)
        m = fp.global_unstructured({n: params[prefix + n] for n in WEIGHTS}, 0.5, method="random", generator=g)
        m = fp.global_unstructured({n: params[prefix + n] for n in WEIGHTS}, 0.3, masks=m)
        return {prefix + n: v for n, v in m.items()}

    def run(model, call, world, rank):
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        params = dict(call.named_parameters())
        masks = masks_for(params, "module." if call is not model else "")
        keeper = fpd.keep_pruned(opt, params, masks)
        losses = []
        for step in range(4):
            x, y = batch(step, world, rank)
            loss = F.cross_entropy(fp.functional_call(call, params, (x,), masks=masks), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.detach())
        keeper.remove()
        losses = list(mean_over_ranks(losses)) if call is not model else losses
        return losses, masks, {n: p.detach() for n, p in model.named_parameters()}

    ref_losses, ref_masks, ref_params = _ref_functional(run, world)
    model = make_model()
    ddp = DDP(model)
    losses, masks, params = run(model, ddp, world, rank)
    out["functional_same_on_ranks"] = _same_on_all_ranks(list(params.values()) + list(masks.values()))
    out["functional_masks_equal_ref"] = all(torch.equal(masks["module." + n], ref_masks[n]) for n in WEIGHTS)
    out["functional_max_param_diff"] = max(float((params[n] - ref_params[n]).abs().max()) for n in params)
    out["functional_max_loss_diff"] = max(float((a - b).abs()) for a, b in zip(losses, ref_losses))
    out["functional_zero"] = all(bool((params[n][~ref_masks[n]] == 0).all()) for n in WEIGHTS)

    # misuse: detached params under grad (torch.func.grad's inputs are the same case) would not be averaged
    detached = {n: p.detach() for n, p in ddp.named_parameters()}
    x = batch(0, world, rank)[0]
    try:
        fp.functional_call(ddp, detached, (x,))
        out["ddp_detached_error"] = "no error"
    except TypeError as err:
        out["ddp_detached_error"] = str(err)
    try:
        torch.func.grad(lambda p: fp.functional_call(ddp, p, (x,)).sum())(detached)
        out["ddp_func_grad_error"] = "no error"
    except TypeError as err:
        out["ddp_func_grad_error"] = str(err)
    with torch.no_grad():  # evaluation needs no gradient sync: allowed
        out["ddp_detached_no_grad_ok"] = bool(torch.allclose(fp.functional_call(ddp, detached, (x,)), model(x)))
    return out


def _ref_functional(run, world):
    model = make_model()
    return run(model, model, world, None)


def two_ranks(rank: int, world: int) -> dict:
    """Everything the 2-rank launch checks: FSDP2 training (a, b), FSDP2 misuse, DDP."""
    return {"fsdp": fsdp_training(rank, world), "misuse": fsdp_misuse(rank, world), "ddp": ddp_training(rank, world)}


def four_ranks(rank: int, world: int) -> dict:
    """FSDP2 training on a 1-D mesh of 4 (rank 3's shards are empty) and on a 2x2 HSDP mesh."""
    return {
        "fsdp": fsdp_training(rank, world, kinds=("plain",)),
        "hsdp": fsdp_training(rank, world, (2, 2), kinds=("functional",)),
    }
