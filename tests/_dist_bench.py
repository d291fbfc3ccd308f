"""Rank workers of tests/test_benchmarks_distributed.py (the distributed benchmark's own parts)."""

from __future__ import annotations

import torch


def traffic_and_gather(rank: int, world: int) -> dict:
    """Traffic's byte counts of known collectives, and the gather baseline's masks (full)."""
    import torch.distributed as dist

    import funcprune as fp
    from benchmarks import distributed as bench

    out = {}
    with bench.Traffic() as traffic:
        dist.all_reduce(torch.zeros(65537, dtype=torch.int64))
    out["all_reduce"] = (traffic.calls, traffic.bytes)
    with bench.Traffic() as traffic:
        dist.all_gather([torch.zeros(10) for _ in range(world)], torch.zeros(10))
    out["all_gather"] = (traffic.calls, traffic.bytes)
    shapes = {"a": (7, 5), "b": (3, 4, 2), "c": (1, 9)}
    tree = bench._local_tree(shapes, rank, world)
    with bench.Traffic() as traffic:
        full = {n: d.full_tensor() for n, d in tree.items()}  # DTensor's functional collectives
    out["full_tensor"] = (traffic.calls, traffic.bytes)
    out["leaves_equal"] = all(torch.equal(full[n], bench.full_leaf(i, s)) for i, (n, s) in enumerate(shapes.items()))
    masks = bench._gathered_select(tree)
    gathered = {n: m.full_tensor() for n, m in masks.items()}
    expected = fp.global_unstructured(full, bench.AMOUNT)
    out["gather_masks_equal"] = all(torch.equal(gathered[n], expected[n]) for n in shapes)
    out["digest_equal"] = bench.digest(gathered) == bench.digest(expected)
    return out
