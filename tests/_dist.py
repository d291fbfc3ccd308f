"""Run a function on real gloo process groups spawned from pytest, bounded in time.

``run_ranks(fn, world_size, *args)`` starts ``world_size`` fresh processes (``spawn``), joins them to
one gloo process group through a ``FileStore`` in a private temporary directory (no ports to race
for), calls ``fn(rank, world_size, *args)`` in each, and returns the per-rank results in rank order.
A rank that raises fails the test with that rank's traceback; a run past ``timeout`` seconds kills
every rank and fails the test. Each rank destroys its process group however ``fn`` ends, so a
failing test never leaves a stray group or process behind. ``fn`` and ``args`` must be picklable
(a module-level function of an importable module).
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

DEFAULT_TIMEOUT = 180.0


def _rank_main(rank: int, world_size: int, store_path: str, fn: Callable, args: tuple, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # 2-4 ranks share this machine's cores
    try:
        dist.init_process_group("gloo", store=dist.FileStore(store_path, world_size), rank=rank, world_size=world_size)
        try:
            results.put((rank, "ok", fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report everything, KeyboardInterrupt included, then exit
        results.put((rank, "error", traceback.format_exc()))


def run_ranks(fn: Callable, world_size: int, *args: Any, timeout: float = DEFAULT_TIMEOUT) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks; return the results by rank."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="funcprune-dist-") as tmp:
        env = {"OMP_NUM_THREADS": "1"}
        old = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            procs = [
                ctx.Process(
                    target=_rank_main,
                    daemon=True,
                    args=(rank, world_size, os.path.join(tmp, "store"), fn, args, results),
                )
                for rank in range(world_size)
            ]
            for proc in procs:
                proc.start()
        finally:
            for key, value in old.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        deadline = time.monotonic() + timeout
        out, failure = {}, None
        try:
            while len(out) < world_size and failure is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    failure = (
                        f"{getattr(fn, '__name__', fn)} on {world_size} ranks ran past {timeout:.0f} s; "
                        f"ranks that finished: {sorted(out)}"
                    )
                    break
                try:
                    rank, status, value = results.get(timeout=min(left, 1.0))
                except queue.Empty:
                    dead = [
                        rank for rank, proc in enumerate(procs) if rank not in out and proc.exitcode not in (None, 0)
                    ]
                    if dead:
                        failure = f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} without a report"
                    continue
                if status == "error":
                    failure = f"rank {rank} of {world_size} raised:\n{value}"
                else:
                    out[rank] = value
        finally:
            for proc in procs:
                if failure is not None and proc.is_alive():
                    proc.kill()
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
            results.close()
    if failure is not None:
        raise AssertionError(failure)
    return [out[rank] for rank in range(world_size)]
