"""Prune an FSDP2-sharded model without gathering it, train it with its masks, checkpoint the masks.

A small MLP is sharded with ``fully_shard`` (its parameters become DTensors, ``Shard(0)`` over the
ranks). ``fp.global_unstructured`` prunes 80% of its weights globally on those DTensors: each rank
reads only its shards, and what crosses the wire is a few 64K-bin histograms. A few SGD steps
follow with the masks kept (``funcprune.distributed.keep_pruned``: shard by shard); the
masks are saved with ``funcprune.distributed.save_masks_dcp`` (torch.distributed.checkpoint) and
loaded back, on the ranks and, resharded, into one process.

Run (from a clone of the repository), on CPU with gloo:
  torchrun --nproc-per-node 2 examples/distributed.py [--steps 5] [--out DIR]
  python examples/distributed.py [--world 2] [--steps 5] [--out DIR]     # spawns its own ranks
  python -m examples.distributed
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback

if __package__ in (None, ""):  # run as a script: import funcprune from this clone
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import funcprune as fp  # noqa: E402
from funcprune.distributed import keep_pruned, load_masks_dcp, save_masks_dcp  # noqa: E402

AMOUNT = 0.8
LR = 0.5


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same init on every rank (fully_shard keeps each rank's slice)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 32, generator=g)
    return x, (x[:, :10] * torch.arange(10)).argmax(dim=1)  # a learnable toy task


def reference_losses(steps: int) -> list:
    """The same loop in one process on plain tensors: the losses the sharded run must reproduce."""
    model = make_model()
    weights = {name: p for name, p in model.named_parameters() if name.endswith("weight")}
    masks = fp.global_unstructured({n: p.detach() for n, p in weights.items()}, AMOUNT)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    keep_pruned(optimizer, weights, masks)
    x, y = data()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def _sum(values) -> list:
    """Sum Python numbers over the ranks (one small all_reduce)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def run(steps: int, out: str, check: bool = False) -> dict:
    """This rank's part: shard, prune, train, checkpoint. Returns rank 0's report."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    weights = {name: p for name, p in model.named_parameters() if name.endswith("weight")}
    local_shapes = {name: tuple(p.to_local().shape) for name, p in weights.items()}

    masks = fp.global_unstructured({n: p.detach() for n, p in weights.items()}, AMOUNT)  # DTensor masks
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    # Zeroes the pruned entries now, the pruned grads before each step and the pruned params after
    # it: each rank on its own shards, nothing communicated.
    keep_pruned(optimizer, weights, masks)
    x, y = data()
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)  # FSDP2 all-gathers the (masked) weights
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    pruned, alive = 0, 0
    for name, p in weights.items():
        keep = masks[name].to_local()
        pruned += int((~keep).sum())
        alive += int(((p.detach().to_local() != 0) & ~keep).sum())  # pruned but nonzero: must be 0
    total = sum(p.numel() for p in weights.values())
    pruned, alive = _sum([pruned, alive])

    path = os.path.join(out, "masks")
    save_masks_dcp(masks, path)  # every rank writes its own shards
    loaded = load_masks_dcp({n: p.detach() for n, p in weights.items()}, path)
    same = _sum([sum(int(not torch.equal(loaded[n].to_local(), masks[n].to_local())) for n in masks)])[0] == 0
    # Only to check the one-process load below (the example's check, not part of the recipe):
    full = {n: m.full_tensor().numpy() for n, m in masks.items()} if check else None  # numpy: pickles by value
    return {
        "world": world,
        "rank": rank,
        "local_shapes": local_shapes,
        "full_masks": full,
        "total": total,
        "pruned": int(pruned),
        "pruned_nonzero": int(alive),
        "losses": losses,
        "checkpoint": path,
        "loaded_equal": same,
        "shapes": {n: tuple(p.shape) for n, p in weights.items()},
    }


def report(result: dict) -> list:
    lines = [
        f"world {result['world']}: {len(result['shapes'])} weights sharded with fully_shard, "
        f"rank 0 holds {sum(torch.Size(s).numel() for s in result['local_shapes'].values())} of "
        f"{result['total']} entries",
        f"global L1 {AMOUNT}: pruned {result['pruned']} of {result['total']} "
        f"(round({AMOUNT} * n) = {round(AMOUNT * result['total'])}), no rank gathered a weight",
        "losses: "
        + " ".join(f"{v:.4f}" for v in result["losses"])
        + f" (one process, same loop: largest difference {result['loss_gap']:.1e})",
        f"pruned weights still nonzero after training: {result['pruned_nonzero']}",
        f"DCP checkpoint {result['checkpoint']}: loaded back on the ranks "
        f"{'bit-exact' if result['loaded_equal'] else 'DIFFERENT'}",
    ]
    if "one_process_pruned" in result:
        lines.append(
            f"loaded into one process (plain tensors): {result['one_process_pruned']} pruned, "
            f"{'bit-exact' if result['one_process_equal'] else 'DIFFERENT'} to the ranks' masks"
        )
    return lines


def _rank_main(rank: int, world: int, store: str, steps: int, out: str, results) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
        try:
            results.put((rank, "ok", run(steps, out, check=True)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def spawn(world: int, steps: int, out: str, timeout: float = 300) -> dict:
    """Run :func:`run` on ``world`` spawned gloo ranks (FileStore, no ports); rank 0's result."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="funcprune-example-") as tmp:
        procs = [
            ctx.Process(
                target=_rank_main, args=(r, world, os.path.join(tmp, "store"), steps, out, results), daemon=True
            )
            for r in range(world)
        ]
        for p in procs:
            p.start()
        got, error = {}, None
        try:
            while len(got) < world and error is None:
                rank, status, value = results.get(timeout=timeout)
                if status == "error":
                    error = f"rank {rank} failed:\n{value}"
                got[rank] = value
        finally:
            for p in procs:
                if error is not None and p.is_alive():
                    p.kill()
                p.join(timeout=30)
    if error is not None:
        raise RuntimeError(error)
    return got[0]


def main(world: int = 2, steps: int = 5, out: str = None, verbose: bool = True) -> dict:
    """Under torchrun: this rank's part (rank 0 prints). Otherwise: spawn ``world`` ranks, then load
    their checkpoint into this one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # launched by torchrun (env://)
        dist.init_process_group("gloo")
        try:
            where = [out or (tempfile.mkdtemp(prefix="funcprune-distributed-") if dist.get_rank() == 0 else "")]
            dist.broadcast_object_list(where)  # one checkpoint directory for all ranks
            result = run(steps, where[0])
        finally:
            dist.destroy_process_group()
    else:
        result = spawn(world, steps, out or tempfile.mkdtemp(prefix="funcprune-distributed-"))
        shapes = result["shapes"]
        plain = load_masks_dcp({n: torch.empty(s) for n, s in shapes.items()}, result["checkpoint"])
        result["one_process_pruned"] = sum(int((~m).sum()) for m in plain.values())
        result["one_process_equal"] = set(plain) == set(shapes) and all(
            m.dtype == torch.bool and torch.equal(m, torch.from_numpy(result["full_masks"][n]))
            for n, m in plain.items()
        )
        result["one_process_masks"] = plain
    if result["rank"] == 0:
        result["reference_losses"] = reference_losses(steps)
        gaps = [abs(a - b) for a, b in zip(result["losses"], result["reference_losses"])]
        result["loss_gap"] = max(gaps, default=0.0)
    if verbose and result["rank"] == 0:
        print("\n".join(report(result)), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2, help="ranks to spawn when not under torchrun")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=None, help="directory for the DCP checkpoint (default: a new temporary one)")
    args = parser.parse_args()
    main(args.world, args.steps, args.out)
