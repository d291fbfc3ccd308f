"""Gather-free global pruning on sharded params: ``python -m benchmarks.distributed [--quick] [--moonshot]``.

Global L1 0.8 over two trees of DTensors sharded ``Shard(0)`` on a 1-D mesh (world 1, 2, 4), each
configuration in fresh processes (its own ranks spawned here, gloo through a ``FileStore``):

* **funcprune**: ``fp.global_unstructured(dtensor_params, 0.8)``: radix passes over the local
  shards whose 64K-bin histograms are summed with ``all_reduce``;
* **gather**: what torchao's prune-aware training does: gather every full tensor to every rank
  (``all_gather``), select there (single-process funcprune), keep the local slice;
* **one process**: ``fp.global_unstructured`` on the full tensors, no process group.

Per rank it measures the peak extra memory (growth of ``VmHWM`` past the inputs, reset through
``/proc/self/clear_refs`` after building them, as ``benchmarks/_memory.py`` does: tracemalloc does
not see torch's allocations), the bytes communicated (every ``torch.distributed`` collective and
functional collective is wrapped: the bytes each rank receives from it, an ``all_reduce`` counting
its tensor, an ``all_gather`` its whole output) and the seconds. The masks of every row are
checked bit-identical to the one-process masks (through ``full_tensor()``, after measuring).

``--moonshot``: 4e9 bf16 entries (16 leaves of 62500 x 4000) sharded over 4 ranks, 1e9 (2 GiB)
per rank generated locally (no rank ever holds a full leaf); exactness checked with all-reduces:
the count pruned equals ``round(0.8 n)`` and the largest pruned ``|w|`` is at most the smallest
kept one. Needs some 14 GiB of RAM.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import queue
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import torch

from . import _memory
from ._models import resnet50_shapes

MIB = 1 << 20
AMOUNT = 0.8
CHUNK = 1 << 20


def transformer_shapes(layers: int = 12, d: int = 768) -> dict[str, tuple]:
    """The matrices of a GPT-2-small-sized transformer body: per layer fused qkv, out, MLP in and out."""
    shapes = {}
    for i in range(layers):
        shapes[f"h.{i}.attn.qkv.weight"] = (3 * d, d)
        shapes[f"h.{i}.attn.out.weight"] = (d, d)
        shapes[f"h.{i}.mlp.fc.weight"] = (4 * d, d)
        shapes[f"h.{i}.mlp.proj.weight"] = (d, 4 * d)
    return shapes


def flat_shapes(leaves: int) -> dict[str, tuple]:
    """``leaves`` matrices of 5000 x 5000 (25M entries each): the one-process tie-path case."""
    return {f"w{i}": (5000, 5000) for i in range(leaves)}


TREES = {
    "resnet50": ("ResNet-50 conv/fc", resnet50_shapes),
    "transformer": ("12 x d768 transformer", transformer_shapes),
    "transformer2": ("2 x d768 transformer", functools.partial(transformer_shapes, 2)),
    "flat200m": ("8 x 5000 x 5000", functools.partial(flat_shapes, 8)),
    "flat50m": ("2 x 5000 x 5000", functools.partial(flat_shapes, 2)),
}


def full_leaf(index: int, shape: tuple, dtype=torch.float32) -> torch.Tensor:
    """Leaf ``index`` of a tree, seeded by its position (the same in every process)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + index)).to(dtype)


# ---- collective accounting ----------------------------------------------------------------------


class Traffic:
    """Counts the collectives and the bytes this rank receives from them, by wrapping the APIs.

    ``torch.distributed``'s collectives count what lands in their output (an ``all_reduce`` its
    tensor, an ``all_gather`` its whole output list); the functional collectives (DTensor's
    redistributions) count their result. Only the outermost wrapped call counts (one API calling
    another is one collective).
    """

    C10D = (
        "all_reduce",
        "all_gather",
        "all_gather_into_tensor",
        "reduce_scatter_tensor",
        "broadcast",
        "all_to_all_single",
        "reduce",
        "all_gather_object",
        "broadcast_object_list",
        "reduce_scatter",
    )
    FUNCOL = (
        "broadcast",
        "all_reduce",
        "all_gather_single",
        "all_gather_single_autograd",
        "reduce_scatter_single",
        "all_gather_tensor",
        "all_gather_tensor_autograd",
        "reduce_scatter_tensor",
        "all_to_all_single",
        "all_reduce_coalesced",
        "all_gather_single_coalesced",
        "all_gather_into_tensor_coalesced",
    )

    def __init__(self):
        self.bytes, self.calls, self._saved, self._depth = 0, 0, [], 0

    @staticmethod
    def _size(x) -> int:
        if isinstance(x, torch.Tensor):
            from funcprune._dtensor import is_dtensor

            x = x.to_local() if is_dtensor(x) else x
            return x.numel() * x.element_size()
        if isinstance(x, (list, tuple)):
            return sum(Traffic._size(t) for t in x)
        return 0

    def _received(self, name: str, funcol: bool, args, kwargs, result) -> int:
        if funcol:
            return self._size(result)
        if name in ("all_gather", "all_gather_object", "all_gather_into_tensor"):
            return self._size(args[0] if args else kwargs.get("output_tensor_list", kwargs.get("output_tensor")))
        if name in ("reduce_scatter_tensor", "reduce_scatter"):
            return self._size(args[0] if args else kwargs.get("output"))
        return self._size(args[0] if args else kwargs.get("tensor"))  # all_reduce, broadcast, reduce

    def _wrap(self, module, name: str, funcol: bool):
        real = getattr(module, name, None)
        if real is None:
            return

        @functools.wraps(real)
        def counted(*args, **kwargs):
            self._depth += 1
            try:
                result = real(*args, **kwargs)
            finally:
                self._depth -= 1
            if self._depth == 0:
                self.calls += 1
                self.bytes += self._received(name, funcol, args, kwargs, result)
            return result

        self._saved.append((module, name, real))
        setattr(module, name, counted)

    def __enter__(self):
        import torch.distributed as dist
        import torch.distributed._functional_collectives as funcol
        import torch.distributed.distributed_c10d as c10d

        for name in self.C10D:
            self._wrap(dist, name, False)
            if getattr(c10d, name, None) is not None and getattr(c10d, name) is not getattr(dist, name):
                self._wrap(c10d, name, False)
        for name in self.FUNCOL:
            self._wrap(funcol, name, True)
        return self

    def __exit__(self, *exc):
        for module, name, real in reversed(self._saved):
            setattr(module, name, real)
        self._saved.clear()


# ---- the three methods, per rank ----------------------------------------------------------------


def _local_tree(shapes: dict[str, tuple], rank: int, world: int, dtype=torch.float32):
    """This rank's ``Shard(0)`` chunks (torch.chunk's split) as DTensors; full leaves built one at a time."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for index, (name, shape) in enumerate(shapes.items()):
        full = full_leaf(index, shape, dtype)
        local_shape, offset = compute_local_shape_and_global_offset(full.shape, mesh, [Shard(0)])
        local = full.narrow(0, offset[0], local_shape[0]).clone()
        del full
        out[name] = DTensor.from_local(
            local,
            mesh,
            [Shard(0)],
            run_check=False,
            shape=torch.Size(shape),
            stride=torch.empty(shape, device="meta").stride(),
        )
    return out


def _gathered_select(dtree) -> dict[str, torch.Tensor]:
    """torchao-style: all_gather every full tensor to every rank, select there, keep the local slice."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    import funcprune as fp

    world = dist.get_world_size()
    full = {}
    for name, d in dtree.items():
        local = d.to_local()
        rows = -(-d.shape[0] // world)  # torch.chunk's chunk size
        padded = torch.zeros((rows,) + tuple(d.shape[1:]), dtype=local.dtype)
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        sizes = [max(0, min(rows, d.shape[0] - r * rows)) for r in range(world)]
        full[name] = torch.cat([p[:s] for p, s in zip(parts, sizes)])
        del parts, padded
    masks = fp.global_unstructured(full, AMOUNT, chunk_size=CHUNK)
    rank, out = dist.get_rank(), {}
    for name, d in dtree.items():
        rows = -(-d.shape[0] // world)
        local = masks[name][rank * rows : rank * rows + d.to_local().shape[0]].clone()
        out[name] = DTensor.from_local(
            local, d.device_mesh, d.placements, run_check=False, shape=d.shape, stride=d.stride()
        )
    return out


def digest(masks: dict[str, torch.Tensor]) -> list[int]:
    """Pruned count and a position-sensitive checksum of full masks (equal masks, equal digests)."""
    pruned, check, offset = 0, 0, 0
    for mask in masks.values():
        zero = (~mask).reshape(-1)
        idx = torch.arange(offset, offset + zero.numel(), dtype=torch.int64)
        pruned += int(zero.sum())
        check = (check + int(((idx * 2654435761) % 1000003 * zero).sum())) % (1 << 61)
        offset += zero.numel()
    return [pruned, check]


def _measured(select: Callable, tree) -> tuple:
    """``(masks, seconds, peak extra MiB, traffic)`` of ``select(tree)`` on this rank."""
    import gc

    gc.collect()
    _memory._reset_peak()
    base_peak = max(_memory._peak_bytes(), _memory._rss_bytes())
    with Traffic() as traffic:
        start = time.perf_counter()
        masks = select(tree)
        seconds = time.perf_counter() - start
    return masks, seconds, (_memory._peak_bytes() - base_peak) / MIB, traffic


def rank_worker(rank: int, world: int, spec: dict) -> dict:
    """One measured call on this rank (``spec``: tree, method); process group already joined if any."""
    import funcprune as fp

    shapes = TREES[spec["tree"]][1]()
    if spec["method"] == "single":
        tree = {name: full_leaf(i, shape) for i, (name, shape) in enumerate(shapes.items())}
        fp.global_unstructured({"w": torch.randn(64)}, 0.5)  # warm-up
    else:
        tree = _local_tree(shapes, rank, world)
        warm = _local_tree({"w": (64,)}, rank, world)
        (fp.global_unstructured(warm, 0.5) if spec["method"] == "funcprune" else _gathered_select(warm))
    select = (
        _gathered_select
        if spec["method"] == "gather"
        else (lambda t: fp.global_unstructured(t, AMOUNT, chunk_size=CHUNK))
    )
    masks, seconds, peak, traffic = _measured(select, tree)
    from funcprune._dtensor import is_dtensor

    local_masks = sum((m.to_local() if is_dtensor(m) else m).numel() for m in masks.values()) / MIB
    full = {n: (m.full_tensor() if is_dtensor(m) else m) for n, m in masks.items()}  # check only
    return {
        "seconds": seconds,
        "peak_mib": peak,
        "mask_mib": local_masks,
        "bytes": traffic.bytes,
        "calls": traffic.calls,
        "digest": digest(full) if rank == 0 else None,
        "entries": sum(math.prod(s) for s in shapes.values()),
    }


# ---- launching ranks ----------------------------------------------------------------------------


def _rank_main(rank: int, world: int, store: str, fn: Callable, args: tuple, results, group: bool) -> None:
    torch.set_num_threads(1)
    try:
        import torch.distributed as dist

        if group:
            dist.init_process_group("gloo", store=dist.FileStore(store, world), rank=rank, world_size=world)
        try:
            results.put((rank, "ok", fn(rank, world, *args)))
        finally:
            if group:
                dist.destroy_process_group()
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))


def launch(fn: Callable, world: int, *args, group: bool = True, timeout: float = 1800) -> list:
    """``fn(rank, world, *args)`` on ``world`` fresh spawned ranks (gloo, FileStore); results by rank."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="funcprune-bench-") as tmp:
        procs = [
            ctx.Process(
                target=_rank_main, daemon=True, args=(r, world, os.path.join(tmp, "store"), fn, args, results, group)
            )
            for r in range(world)
        ]
        for p in procs:
            p.start()
        out, failure, deadline = {}, None, time.monotonic() + timeout
        try:
            while len(out) < world and failure is None:
                if time.monotonic() > deadline:
                    failure = f"timed out after {timeout:.0f} s"
                    break
                try:
                    rank, status, value = results.get(timeout=1.0)
                except queue.Empty:
                    dead = [r for r, p in enumerate(procs) if r not in out and p.exitcode not in (None, 0)]
                    if dead:
                        failure = f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}"
                    continue
                if status == "error":
                    failure = f"rank {rank}: {value}"
                else:
                    out[rank] = value
        finally:
            for p in procs:
                if failure is not None and p.is_alive():
                    p.kill()
                p.join(timeout=30)
    if failure is not None:
        raise RuntimeError(failure)
    return [out[r] for r in range(world)]


def measure(tree: str, method: str, world: int, repeats: int = 1) -> dict:
    """One row: ``repeats`` launches (fresh processes each); seconds and peak are medians, with their ranges."""
    runs = []
    for _ in range(repeats):
        ranks = launch(rank_worker, world, {"tree": tree, "method": method}, group=method != "single")
        runs.append(
            {
                "seconds": max(r["seconds"] for r in ranks),
                "peak_mib": max(r["peak_mib"] for r in ranks),
                "mask_mib": max(r["mask_mib"] for r in ranks),
                "bytes": max(r["bytes"] for r in ranks),
                "calls": max(r["calls"] for r in ranks),
                "digest": ranks[0]["digest"],
                "entries": ranks[0]["entries"],
            }
        )
    row = {"tree": tree, "method": method, "world": world, **runs[0]}
    if repeats > 1:
        for key in ("seconds", "peak_mib"):
            values = sorted(run[key] for run in runs)
            row[key] = statistics.median(values)
            row[key + "_range"] = (values[0], values[-1])
        if any(run["digest"] != runs[0]["digest"] for run in runs):
            row["digest"] = None  # runs that differ are never "identical"
    return row


def _cell(row: dict, key: str, digits: int) -> str:
    """A median with its range over the repeats (just the value for one run)."""
    text = f"{row[key]:.{digits}f}"
    if key + "_range" in row:
        lo, hi = row[key + "_range"]
        text += f" [{lo:.{digits}f}-{hi:.{digits}f}]"
    return text


def _fmt_bytes(n: float) -> str:
    return f"{n / MIB:.2f} MiB" if n >= MIB / 100 else f"{n / 1024:.1f} KiB"


def table(rows: list[dict]) -> str:
    """The markdown table: one line per (tree, world), funcprune against gather and one process."""
    lines = [
        "| tree (entries) | world "
        "| funcprune: s / peak extra MiB (local masks) / received per rank (collectives) "
        "| gather: s / peak extra MiB / received | time vs gather | peak vs gather | bytes vs gather "
        "| time vs 1 process | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["tree"], r["method"], r["world"]): r for r in rows}
    for (tree, method, world), ours in by.items():
        if method != "funcprune":
            continue
        single, gather = by.get((tree, "single", 1)), by.get((tree, "gather", world))
        same = (
            single is not None
            and ours["digest"] == single["digest"]
            and (gather is None or gather["digest"] == single["digest"])
        )
        ours_cell = (
            f"{_cell(ours, 'seconds', 2)} / {_cell(ours, 'peak_mib', 1)} ({ours['mask_mib']:.1f}) / "
            f"{_fmt_bytes(ours['bytes'])} ({ours['calls']})"
        )
        if gather is not None:
            gather_cell = (
                f"{_cell(gather, 'seconds', 2)} / {_cell(gather, 'peak_mib', 1)} / {_fmt_bytes(gather['bytes'])}"
            )
            ratios = (
                f"{ours['seconds'] / gather['seconds']:.2f}x | "
                f"{ours['peak_mib'] / max(gather['peak_mib'], 1e-9):.2f}x | "
                f"{ours['bytes'] / max(gather['bytes'], 1):.4f}x"
            )
        else:
            gather_cell, ratios = "-", "- | - | -"
        vs_single = f"{ours['seconds'] / single['seconds']:.2f}x" if single else "-"
        if single and "seconds_range" in single:
            vs_single += f" (1 process: {_cell(single, 'seconds', 2)} s)"
        lines.append(
            f"| {TREES[tree][0]} ({ours['entries'] / 1e6:.1f}M) | {world} | {ours_cell} | {gather_cell} | "
            f"{ratios} | {vs_single} | {'yes' if same else 'NO'} |"
        )
    return "\n".join(lines)


# ---- the moonshot -------------------------------------------------------------------------------

MOON_LEAVES, MOON_SHAPE = 16, (62_500, 4_000)  # 16 x 2.5e8 = 4e9 bf16 entries


def moon_worker(rank: int, world: int, leaves: int = MOON_LEAVES) -> dict:
    """4e9 bf16 entries over ``world`` ranks, generated shard by shard; exactness via all-reduces."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    import funcprune as fp

    mesh = init_device_mesh("cpu", (world,))
    tree = {}
    for i in range(leaves):
        shape = torch.Size(MOON_SHAPE)
        local_shape, _ = compute_local_shape_and_global_offset(shape, mesh, [Shard(0)])
        g = torch.Generator().manual_seed(7919 * i + rank)  # the shard defines the full tensor
        local = torch.empty(local_shape, dtype=torch.bfloat16)
        for start in range(0, local_shape[0], 1024):  # float32 temporaries stay small
            rows = min(1024, local_shape[0] - start)
            local[start : start + rows] = torch.randn((rows, shape[1]), generator=g)
        tree[f"layer{i}.weight"] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=shape, stride=(shape[1], 1)
        )
    masks, seconds, peak_extra, traffic = _measured(lambda t: fp.global_unstructured(t, AMOUNT, chunk_size=CHUNK), tree)
    peak_total = _memory._peak_bytes() / MIB
    # Exactness, shard by shard (chunked), summed over the ranks.
    pruned, top_pruned, low_kept = 0, -math.inf, math.inf
    for name, d in tree.items():
        w, m = d.to_local(), masks[name].to_local()
        for start in range(0, w.shape[0], 1024):
            a, k = w[start : start + 1024].abs().float(), m[start : start + 1024]
            pruned += int((~k).sum())
            if bool((~k).any()):
                top_pruned = max(top_pruned, float(a[~k].max()))
            if bool(k.any()):
                low_kept = min(low_kept, float(a[k].min()))
    stats = torch.tensor([pruned], dtype=torch.int64)
    dist.all_reduce(stats)
    hi, lo = torch.tensor([top_pruned], dtype=torch.float64), torch.tensor([low_kept], dtype=torch.float64)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    n = leaves * math.prod(MOON_SHAPE)
    return {
        "seconds": seconds,
        "peak_extra_mib": peak_extra,
        "peak_total_mib": peak_total,
        "local_weights_mib": sum(d.to_local().numel() * 2 for d in tree.values()) / MIB,
        "local_masks_mib": sum(m.to_local().numel() for m in masks.values()) / MIB,
        "bytes": traffic.bytes,
        "calls": traffic.calls,
        "entries": n,
        "pruned": int(stats[0]),
        "expected": round(AMOUNT * n),
        "max_pruned": float(hi[0]),
        "min_kept": float(lo[0]),
    }


def moonshot(leaves: int = MOON_LEAVES, timeout: float = 3600) -> str:
    ranks = launch(moon_worker, 4, leaves, timeout=timeout)
    r0 = ranks[0]
    exact = r0["pruned"] == r0["expected"] and r0["max_pruned"] <= r0["min_kept"]
    return (
        f"moonshot: {r0['entries']:.3g} bf16 entries over 4 ranks: {max(r['seconds'] for r in ranks):.1f} s, "
        f"per-rank peak extra {max(r['peak_extra_mib'] for r in ranks):.0f} MiB (peak RSS "
        f"{max(r['peak_total_mib'] for r in ranks):.0f} MiB; local weights {r0['local_weights_mib']:.0f} MiB, "
        f"local masks {r0['local_masks_mib']:.0f} MiB), "
        f"received per rank {_fmt_bytes(max(r['bytes'] for r in ranks))} "
        f"in {max(r['calls'] for r in ranks)} collectives; pruned {r0['pruned']} of {r0['entries']} "
        f"(round(0.8 n) = {r0['expected']}), max |pruned| {r0['max_pruned']:.6g} <= min |kept| "
        f"{r0['min_kept']:.6g}: {'EXACT' if exact else 'NOT EXACT'}"
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ResNet-50 and a 2-layer transformer, worlds 1 and 2")
    parser.add_argument("--worlds", default=None, help="comma-separated world sizes (default 1,2,4)")
    parser.add_argument("--trees", default=None, help="comma-separated trees: " + ", ".join(TREES))
    parser.add_argument("--moonshot", action="store_true", help="only the 4e9-entry bf16 run over 4 ranks (~14 GiB)")
    parser.add_argument("--methods", default="funcprune,gather", help="comma-separated: funcprune, gather")
    parser.add_argument("--repeats", type=int, default=1, help="launches per row: medians and [min-max] ranges")
    parser.add_argument("--moon-leaves", type=int, default=MOON_LEAVES, help=argparse.SUPPRESS)  # 2.5e8 each
    args = parser.parse_args(argv)
    if args.moonshot:
        print(moonshot(args.moon_leaves), flush=True)
        return []
    worlds = [int(w) for w in args.worlds.split(",")] if args.worlds else ([1, 2] if args.quick else [1, 2, 4])
    trees = (
        args.trees.split(",")
        if args.trees
        else (["resnet50", "transformer2"] if args.quick else ["resnet50", "transformer"])
    )
    methods = args.methods.split(",")
    rows = []
    for tree in trees:
        single = measure(tree, "single", 1, args.repeats)
        rows.append(single)
        print(f"{tree} one process: {single['seconds']:.2f} s, peak extra {single['peak_mib']:.1f} MiB", flush=True)
        for world in worlds:
            for method in methods:
                r = measure(tree, method, world, args.repeats)
                rows.append(r)
                print(
                    f"{tree} world {world} {method}: {r['seconds']:.2f} s, peak extra {r['peak_mib']:.1f} MiB "
                    f"(local masks {r['mask_mib']:.1f} MiB), received {_fmt_bytes(r['bytes'])} in {r['calls']} "
                    f"collectives, masks {'identical' if r['digest'] == single['digest'] else 'DIFFER'}",
                    flush=True,
                )
    print()
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
