"""compat ``global_unstructured`` (L1 0.8) vs torch's, both tie orders, each run in a fresh process.

By default compat must give torch's masks and never cost more than torch, in time
or peak memory; where no tie straddles the cut (the lean radix path) at most 0.2x torch's time
and 1/3 of its peak extra memory. ``tie_order("index")`` takes the lean path every time.

Models: ResNet-18 (hand-written, torchvision's layout, every conv/linear weight) and one
``nn.Linear(10000, 5000)`` (50M entries), both with torch's default init. A worker builds the
model, restarts the peak-RSS count, makes one ``global_unstructured`` call and reports the
seconds, the growth of the peak RSS (``VmHWM``), which path compat took, and a digest of the
masks (so the rows also check that the default mode gives torch's masks, bit for bit).
"""

from __future__ import annotations

import gc
import statistics
import time

import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from . import _memory, _models

MODELS = {"resnet18": "ResNet-18 (11.7M)", "linear50m": "nn.Linear 50M", "tiny": "2 small Linear"}
# (model, seed): ResNet-18's seed 0 has a tie straddling the 0.8 cut, seed 1 none; at 50M float32
# entries from torch's init some 4-5 weights share each representable value near the cut, so a
# tie always straddles it there (the lean path shows in the tie_order("index") rows).
ROWS = (("resnet18", 0), ("resnet18", 1), ("linear50m", 0))
LIBS = ("torch", "compat", "compat-index")


def _model(name: str, seed: int) -> nn.Module:
    if name == "tiny":  # the smoke test's
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 8))
    if name == "linear50m":
        torch.manual_seed(seed)
        return nn.Linear(10_000, 5_000, bias=False)
    return _models.build(name, seed)


def _pairs(model: nn.Module) -> list:
    return [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _digest(pairs) -> list[int]:
    """Pruned count and a position-sensitive checksum of all masks (equal masks, equal digests)."""
    pruned, check, offset = 0, 0, 0
    for m, name in pairs:
        zero = (getattr(m, name + "_mask") == 0).reshape(-1)
        idx = torch.arange(offset, offset + zero.numel(), dtype=torch.int64)
        pruned += int(zero.sum())
        check = (check + int(((idx * 2654435761) % 1000003 * zero).sum())) % (1 << 61)
        offset += zero.numel()
    return [pruned, check]


def worker(spec: dict) -> dict:
    """One global L1 call in this process (``spec``: ``compat_global`` model, ``lib``, ``amount``)."""
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    lib, amount = spec["lib"], spec.get("amount", 0.8)
    with torch.no_grad():
        model = _model(spec["compat_global"], spec.get("seed", 0))
    pairs = _pairs(model)
    path = []
    if lib == "torch":
        prune = torch_prune
        warm = nn.Linear(8, 8)
        prune.global_unstructured([(warm, "weight")], pruning_method=prune.L1Unstructured, amount=0.5)
    else:
        import funcprune.compat as prune
        from funcprune.compat import _functions

        real = _functions._torch_order_global
        _functions._torch_order_global = lambda *a: path.append("torch topk") or real(*a)
        for order in ("torch", "index"):
            with prune.tie_order(order):
                prune.global_unstructured(
                    [(nn.Linear(8, 8), "weight")], pruning_method=prune.L1Unstructured, amount=0.5
                )
        path.clear()
    gc.collect()
    _memory._reset_peak()
    base_rss = _memory._rss_bytes()
    base_peak = max(_memory._peak_bytes(), base_rss)
    start = time.perf_counter()
    if lib == "compat-index":
        with prune.tie_order("index"):
            prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=amount)
    seconds = time.perf_counter() - start
    gc.collect()
    return {
        "seconds": seconds,
        "peak_mib": (_memory._peak_bytes() - base_peak) / _memory._MIB,
        "held_mib": (_memory._rss_bytes() - base_rss) / _memory._MIB,
        "digest": _digest(pairs),
        "path": "torch" if lib == "torch" else ("torch topk (tie at the cut)" if path else "lean radix"),
        "entries": sum(m.weight.numel() for m, _ in pairs),
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def rows(processes: int = 3, cases=ROWS, amount: float = 0.8, threads: int = 0) -> list[dict]:
    """For each ``(model, seed)``: ``processes`` fresh-process runs of each library, interleaved; medians."""
    out = []
    for model, seed in cases:
        runs = {lib: [] for lib in LIBS}
        for _ in range(processes):
            for lib in LIBS:
                got = _memory.run_worker(
                    {
                        "compat_global": model,
                        "seed": seed,
                        "lib": lib,
                        "amount": amount,
                        "threads": threads or torch.get_num_threads(),
                    }
                )
                if "error" not in got:
                    runs[lib].append(got)
                else:
                    print(f"  {model} seed {seed} {lib}: {got['error']}", flush=True)
        row = {"model": model, "seed": seed, "amount": amount, "runs": runs}
        if all(runs.values()):
            ref = runs["torch"][0]
            for lib in LIBS:
                row[lib] = {
                    "seconds": _median(runs[lib], "seconds"),
                    "peak_mib": _median(runs[lib], "peak_mib"),
                    "paths": sorted({r["path"] for r in runs[lib]}),
                    "same_masks": all(r["digest"] == ref["digest"] for r in runs[lib]),
                    "same_count": all(r["digest"][0] == ref["digest"][0] for r in runs[lib]),
                }
        out.append(row)
        print(line(row), flush=True)
    return out


def line(row: dict) -> str:
    if "torch" not in row:
        errors = {lib: len(r) for lib, r in row["runs"].items()}
        return f"compat global L1 [{_label(row)}]: a worker failed (successful runs: {errors})"
    t = row["torch"]
    parts = [f"torch {t['seconds']:.2f} s +{t['peak_mib']:.0f} MiB"]
    for lib in LIBS[1:]:
        r = row[lib]
        parts.append(
            f"{lib} {r['seconds']:.2f} s ({r['seconds'] / t['seconds']:.2f}x) +{r['peak_mib']:.0f} MiB "
            f"({r['peak_mib'] / max(t['peak_mib'], 1e-9):.2f}x) [{', '.join(r['paths'])}; "
            f"{'torch masks' if r['same_masks'] else 'same count' if r['same_count'] else 'DIFFERENT'}]"
        )
    return f"compat global L1 {row['amount']} [{_label(row)}]: " + "; ".join(parts)


def _label(row: dict) -> str:
    return f"{MODELS[row['model']]}, seed {row['seed']}"


def markdown(rows_: list[dict]) -> str:
    """The section appended to results.md."""
    lines = [
        "",
        "## compat global_unstructured L1 0.8 (fresh process per run, medians)",
        "",
        "Default tie order must give torch's masks and cost at most torch's time and peak memory; on the "
        'lean path (no tie straddling the cut, and always with `tie_order("index")`) at most 0.2x torch\'s '
        "time and 0.33x its peak extra memory.",
        "",
        "| model | mode | path taken | masks | time (s) | vs torch | peak extra (MiB) | vs torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows_:
        if "torch" not in row:
            lines.append(f"| {_label(row)} | | worker failed | | | | | |")
            continue
        t = row["torch"]
        lines.append(f"| {_label(row)} | torch | | | {t['seconds']:.2f} | 1 | {t['peak_mib']:.0f} | 1 |")
        for lib, mode in (("compat", 'compat, tie_order("torch")'), ("compat-index", 'compat, tie_order("index")')):
            r = row[lib]
            masks = "torch's" if r["same_masks"] else "same count" if r["same_count"] else "DIFFERENT"
            lines.append(
                f"| {_label(row)} | {mode} | {', '.join(r['paths'])} | {masks} | "
                f"{r['seconds']:.2f} | {r['seconds'] / t['seconds']:.3f} | {r['peak_mib']:.0f} | "
                f"{r['peak_mib'] / max(t['peak_mib'], 1e-9):.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    """``python -m benchmarks._compat_global [--processes N] [--threads T] [--out PATH]``: the rows alone."""
    import argparse
    import os
    import platform

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads in the workers (0: torch's default)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "compat_global.md"))
    args = parser.parse_args(argv)
    got = rows(processes=args.processes, threads=args.threads)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    head = (
        f"# compat global_unstructured rows\n\ntorch {torch.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} cores, {args.threads or torch.get_num_threads()} torch thread(s) per worker, "
        f"{args.processes} fresh processes per cell, load average {os.getloadavg()[0]:.1f}, {when}.\n"
    )
    with open(args.out, "w") as f:
        f.write(head + markdown(got))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
