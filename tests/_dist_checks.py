"""Rank workers of tests/test_distributed_checks.py, run through tests/_dist.py.

* FSDP2 after masking: the next forward is the masked model's, whatever FSDP2 kept unsharded.
* Ranks that disagree about a global selection: every rank raises, in bounded time.
* A rank outside a DTensor's mesh.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def _masked_reference(dense: nn.Module, full_masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The single-process oracle: a plain copy of the model with the masks multiplied in."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if name in full_masks:
                param.mul_(full_masks[name])
        return ref(x)


def fsdp_next_forward_masked(rank: int, world: int) -> dict[str, list]:
    """For each FSDP2 configuration and each way masks are put in force, after a no-grad evaluation
    forward: is the next forward the masked model's (and not the dense one's)?

    Configurations: the root owning a layer (the root does not reshard after forward by default),
    and every group with ``reshard_after_forward=False``. Masks: layer 0 100% pruned (its shards
    all zero on both ranks), layer 2 half pruned (a root-owned layer in the first configuration).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    import funcprune.distributed as fpd

    mesh = init_device_mesh("cpu", (world,))
    dense = _model()
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    full_masks = {"0.weight": torch.zeros(6, 4, dtype=torch.bool), "2.weight": torch.rand(5, 6, generator=g) < 0.5}
    expected = _masked_reference(dense, full_masks, x)
    with torch.no_grad():
        dense_out = dense(x)
    out = {}
    for config in ("root_default", "no_reshard_after_forward"):
        for how in ("apply_masks_", "keep_pruned", "update", "post_step"):
            model = copy.deepcopy(dense)
            if config == "root_default":
                fully_shard(model[0], mesh=mesh)
                fully_shard(model[4], mesh=mesh)
                fully_shard(model, mesh=mesh)  # owns layer 2
            else:
                for i in (0, 2, 4):
                    fully_shard(model[i], mesh=mesh, reshard_after_forward=False)
                fully_shard(model, mesh=mesh, reshard_after_forward=False)
            params = dict(model.named_parameters())
            masks = {
                name: distribute_tensor(m, params[name].device_mesh, params[name].placements)
                for name, m in full_masks.items()
            }
            opt = torch.optim.SGD(model.parameters(), lr=0.0)
            keeper = fpd.keep_pruned(opt, params) if how in ("update", "post_step") else None
            with torch.no_grad():
                model(x)  # an evaluation before pruning: FSDP2 keeps unsharded copies
            if how == "apply_masks_":
                fpd.apply_masks_(params, masks)
            elif how == "keep_pruned":
                fpd.keep_pruned(opt, params, masks)
            elif how == "update":
                keeper.update(masks)
            else:  # masks in force, an evaluation, pruned entries written back: the post-step hook re-zeroes
                keeper.update(masks)
                with torch.no_grad():
                    model(x)
                    for name, mask in masks.items():
                        params[name].to_local().masked_fill_(~mask.to_local(), 1.0)
                opt.step()
            with torch.no_grad():
                got = model(x)
            out[f"{config}/{how}"] = [
                bool(torch.allclose(got, expected, atol=1e-6)),
                bool(torch.allclose(got, dense_out, atol=1e-6)),
            ]
    return out


def _sharded(full: torch.Tensor, mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    return distribute_tensor(full, mesh, [Shard(0)])


def disagreeing_ranks(rank: int, world: int) -> dict[str, object]:
    """Global L1 where the ranks' calls differ in one way each; what every rank raised (or "returned")."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    import funcprune as fp

    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(8, 10, generator=g), torch.randn(6, 5, generator=g)
    tree = {"a": _sharded(a, mesh), "b": _sharded(b, mesh)}
    prior = fp.global_unstructured(tree, 0.2)
    other = {"a": tree["a"], "c": tree["b"]}  # same shapes, another name
    local64 = tree["b"].to_local().double()
    b64 = DTensor.from_local(local64, mesh, [Shard(0)], run_check=False, shape=b.shape, stride=b.stride())
    cases = {
        "amount": lambda: fp.global_unstructured(tree, 0.3 if rank == 0 else 0.7),
        "tree": lambda: fp.global_unstructured(tree if rank == 0 else other, 0.5),
        "masks": lambda: fp.global_unstructured(tree, 0.5, masks=prior if rank == 0 else None),
        "dtype": lambda: fp.global_unstructured({"a": tree["a"], "b": tree["b"] if rank == 0 else b64}, 0.5),
        "method": lambda: fp.global_unstructured(tree, 0.5, method="l1" if rank == 0 else "random"),
        "prune_l1": lambda: fp.l1_unstructured(tree["a"], 3 if rank == 0 else 4),
    }
    out = {}
    for key, call in cases.items():
        try:
            call()
            out[key] = "returned"
        except ValueError as err:
            out[key] = str(err)
    out["agreeing"] = sum(int(m.to_local().sum()) for m in fp.global_unstructured(tree, 0.5).values())
    return out


def outside_the_mesh(rank: int, world: int) -> dict[str, object]:
    """World 3, a mesh on ranks 0 and 1: the selections on every rank; what each rank got.

    Ranks 0 and 1 compare their masks with the one-process oracle; rank 2 reports its local shards.
    """
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import funcprune as fp
    from funcprune._dtensor import is_dtensor

    mesh = DeviceMesh("cpu", [0, 1])  # every rank of the world constructs it
    g = torch.Generator().manual_seed(6)
    full = {"a": torch.randn(5, 4, generator=g), "b": torch.randn(6, generator=g)}
    tree = {name: distribute_tensor(t, mesh, [Shard(0)]) for name, t in full.items()}
    prior_full = fp.global_unstructured(full, 0.25)
    prior = {name: distribute_tensor(m, mesh, [Shard(0)]) for name, m in prior_full.items()}
    cases = {
        "global_l1": (lambda p: fp.global_unstructured(p, 0.5), tree, full),
        "global_l1_prior": (
            lambda p: fp.global_unstructured(p, 0.5, masks=prior if p is tree else prior_full),
            tree,
            full,
        ),
        "global_random": (
            lambda p: fp.global_unstructured(
                p, 3, method="random", stream="hash", generator=torch.Generator().manual_seed(0)
            ),
            tree,
            full,
        ),
        "prune_l1": (lambda p: fp.prune(p, fp.l1_unstructured, 0.3), tree, full),
        "ln_structured": (lambda p: {"a": fp.ln_structured(p["a"], 0.5, 2, 1)}, tree, full),
        "random_structured": (
            lambda p: {
                "a": fp.random_structured(
                    p["a"],
                    0.5,
                    0,
                    generator=torch.Generator().manual_seed(0),
                    **({} if p is tree else {"stream": "hash"}),
                )
            },
            tree,
            full,
        ),
    }
    out = {}
    for key, (call, sharded, plain) in cases.items():
        got = call(sharded)
        if rank == 2:
            out[key] = sorted((name, is_dtensor(m), tuple(m.shape), m.to_local().numel()) for name, m in got.items())
        else:
            want = call(plain)
            out[key] = all(torch.equal(m.full_tensor(), want[name]) for name, m in got.items())
    try:
        out["sparsity"] = float(fp.sparsity(fp.global_unstructured(tree, 0.5), tree).fraction)
    except ValueError as err:
        out["sparsity"] = str(err)
    return out
