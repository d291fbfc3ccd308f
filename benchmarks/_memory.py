"""Memory and scale: each case runs in a fresh Python process (``run.py --worker SPEC``).

The worker builds its weights, restarts the peak-RSS count (``/proc/self/clear_refs``), runs
one global pruning call and reports the growth of the peak (``VmHWM``), the RSS still held
afterwards (the masks, whatever the library keeps alive, and what the allocator keeps cached)
and the seconds the call took.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.utils.prune as torch_prune

import funcprune as fp

from . import _models
from ._cases import holders

_MIB = 1 << 20
HUGE_TOTAL = (1 << 31) + (1 << 26)  # past INT_MAX: 2.21e9 float16 entries, 4.1 GiB of weights


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) * 1024


def _peak_bytes() -> int:
    """Peak RSS of this process. Not ``ru_maxrss``: a child forked from a big parent inherits its peak."""
    try:
        return _status_bytes("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    """Restart the peak-RSS count at the current RSS (Linux >= 4.0), so building the inputs does not hide it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _weights(spec: dict) -> dict[str, torch.Tensor]:
    dtype = getattr(torch, spec.get("dtype", "float32"))
    if spec["model"] == "flat":
        return _models.flat_weights(spec["n"], leaves=spec.get("leaves", 16), dtype=dtype)
    return _models.weights(spec["model"], dtype=dtype)


def _mask_bytes(masks) -> int:
    return sum(m.numel() * m.element_size() for m in masks.values())


def worker(spec: dict) -> dict:
    """Run one case in this process; return its measurements (see the module docstring)."""
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    weights = _weights(spec)
    amount = spec.get("amount", 0.8)
    tiny = {"w": torch.randn(64)}
    if spec["lib"] == "torch":
        mods = holders(weights)
        pairs = [(m, "weight") for m in mods.values()]
        warm = holders(tiny)
        torch_prune.global_unstructured([(warm["w"], "weight")], pruning_method=torch_prune.L1Unstructured, amount=0.5)
    else:
        fp.global_unstructured(tiny, 0.5)
    gc.collect()
    _reset_peak()
    base_rss = _rss_bytes()
    base_peak = max(_peak_bytes(), base_rss)
    start = time.perf_counter()
    if spec["lib"] == "torch":
        torch_prune.global_unstructured(pairs, pruning_method=torch_prune.L1Unstructured, amount=amount)
        masks = {name: m.weight_mask for name, m in mods.items()}
    else:
        masks = fp.global_unstructured(weights, amount, chunk_size=spec.get("chunk", 1 << 20))
    seconds = time.perf_counter() - start
    gc.collect()
    out = {
        "seconds": seconds,
        "peak_mib": (_peak_bytes() - base_peak) / _MIB,
        "held_mib": (_rss_bytes() - base_rss) / _MIB,
        "mask_mib": _mask_bytes(masks) / _MIB,
        "entries": sum(w.numel() for w in weights.values()),
    }
    if spec.get("verify"):
        out.update(_verify(weights, masks, amount))
    return out


def _verify(weights, masks, amount: float) -> dict:
    """Exact count of pruned entries, and no kept |w| below a pruned one (leaf by leaf, in chunks)."""
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    top_pruned, low_kept = -math.inf, math.inf
    for name, w in weights.items():
        a, m = w.abs(), masks[name]
        top_pruned = max(top_pruned, float(a.masked_fill(m, -math.inf).max()))
        low_kept = min(low_kept, float(a.masked_fill(~m, math.inf).min()))
        del a
    expected = round(amount * total)
    return {
        "pruned": pruned,
        "expected": expected,
        "exact": pruned == expected,
        "ordered": top_pruned <= low_kept,
        "threshold": low_kept,
    }


def run_worker(spec: dict, timeout: float = 900, env: dict[str, str] | None = None) -> dict | None:
    """Run ``spec`` in a fresh interpreter (``env`` added to its environment); its measurements, or
    ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "benchmarks.run", "--worker", json.dumps(spec)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ``benchmarks`` imports from
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=root,
            env=None if env is None else dict(os.environ, **env),
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


def scaling_sizes(quick: bool):
    """Total prunable entries of the scaling run."""
    return (
        [1_000_000, 2_000_000, 4_000_000]
        if quick
        else [1_000_000, 3_000_000, 10_000_000, 30_000_000, 100_000_000, 200_000_000]
    )


def growth_exponent(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(n): 1 is linear, n log n is a bit above."""
    xs, ys = [math.log(n) for n in sizes], [math.log(max(t, 1e-9)) for t in seconds]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
