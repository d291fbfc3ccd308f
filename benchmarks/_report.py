"""Formatting the benchmark results: console lines, ``results.md`` and the scaling plot."""

from __future__ import annotations

from . import _memory


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}" if seconds < 0.1 else f"{seconds * 1e3:.0f}"


def _verdict(row: dict) -> str:
    if "error" in row:
        return "ERROR"
    if row["target"] is None:
        return ""
    if round(row["ratio"], 3) <= row["target"]:  # as printed
        return "ok"
    # The median misses: MISS. When at least a quarter of the rounds met the target, say so (on
    # equal work, the forward rows, that is within the machine's noise), but it is still a miss.
    return "MISS (within spread)" if round(row.get("ratio_low", row["ratio"]), 3) <= row["target"] else "MISS"


def _ratio(row: dict) -> str:
    """The median per-round ratio with its quartiles (the spread of the paired samples)."""
    if "ratio_low" not in row:
        return f"{row['ratio']:.3f}"
    return f"{row['ratio']:.3f} ({row['ratio_low']:.3f}-{row['ratio_high']:.3f})"


def _notes(row: dict) -> list[str]:
    notes = [row["note"]] if row.get("note") else []
    if row.get("ours_faults") or row.get("theirs_faults"):  # counted on the forward rows; shown when any
        notes.append(
            f"page faults per call: {row['ours']} {row['ours_faults']:.0f}, {row['theirs']} {row['theirs_faults']:.0f}"
        )
    return notes


def header(info: dict) -> str:
    return " | ".join(f"{k}: {v}" for k, v in info.items())


def row_line(row: dict) -> str:
    name = f"{row['group']} [{row['shapes']}]"
    if "error" in row:
        return f"{name:60s} ERROR {row['error']}"
    target = f"<= {row['target']:.2f}" if row["target"] is not None else ""
    note = "".join(f"\n    note: {n}" for n in _notes(row))
    return (
        f"{name:60s} {row['ours']} {_ms(row['ours_s']):>8s} ms  {row['theirs']} {_ms(row['theirs_s']):>8s} ms  "
        f"ratio {_ratio(row)} {target} {_verdict(row)}{note}"
    )


def _mem(got: dict | None, key: str) -> str:
    if not got or "error" in got:
        return (got or {}).get("error", "n/a")
    return f"{got[key]:.0f}"


def memory_line(model: str, got: dict) -> str:
    ours, theirs = got["funcprune"], got["torch"]
    return (
        f"memory global L1 0.8 [{model}]: peak +{_mem(ours, 'peak_mib')} vs +{_mem(theirs, 'peak_mib')} MiB, "
        f"masks {_mem(ours, 'mask_mib')} vs {_mem(theirs, 'mask_mib')} MiB"
    )


def scaling_line(n: int, got: dict) -> str:
    parts = []
    for lib in ("funcprune", "torch"):
        g = got[lib]
        parts.append(f"{lib} {g['error']}" if "error" in g else f"{lib} {g['seconds']:.2f} s +{g['peak_mib']:.0f} MiB")
    return f"scaling n={n:>11,d}: " + ", ".join(parts)


def _ratio_cell(ours: dict | None, theirs: dict | None, key: str) -> str:
    if not ours or not theirs or "error" in ours or "error" in theirs or theirs[key] <= 0:
        return "n/a"
    return f"{ours[key] / theirs[key]:.3f}"


def _timing_table(rows: list[dict]) -> list[str]:
    lines = [
        "| comparison | shapes | funcprune side (ms) | reference side (ms) | ratio (quartiles) | target | |",
        "|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['group']} | {r['shapes']} | | | | | ERROR: {r['error']} |")
            continue
        target = f"<= {r['target']:.2f}" if r["target"] is not None else ""
        marks = []
        for note in _notes(r):
            notes.append(note)
            marks.append(f"[{len(notes)}]")
        mark = " " + " ".join(marks) if marks else ""
        lines.append(
            f"| {r['group']}{mark} | {r['shapes']} | {r['ours']} {_ms(r['ours_s'])} | "
            f"{r['theirs']} {_ms(r['theirs_s'])} | {_ratio(r)} | {target} | {_verdict(r)} |"
        )
    return lines + [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)]


def _memory_table(memory: list[dict]) -> list[str]:
    lines = [
        "| global L1 0.8 | funcprune peak extra (MiB) | torch peak extra (MiB) | ratio (target <= 0.33) "
        "| funcprune held (MiB) | torch held (MiB) | funcprune masks (MiB) | torch masks (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in memory:
        ours, theirs = m["funcprune"], m["torch"]
        lines.append(
            f"| {m['model']} | {_mem(ours, 'peak_mib')} | {_mem(theirs, 'peak_mib')} | "
            f"{_ratio_cell(ours, theirs, 'peak_mib')} | "
            f"{_mem(ours, 'held_mib')} | {_mem(theirs, 'held_mib')} | "
            f"{_mem(ours, 'mask_mib')} | {_mem(theirs, 'mask_mib')} |"
        )
    return lines


def _scaling_table(scaling: list[dict]) -> list[str]:
    lines = [
        "| entries | funcprune (s) | torch (s) | ratio | funcprune peak extra (MiB) | torch peak extra (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for s in scaling:
        ours, theirs = s["funcprune"], s["torch"]
        sec = lambda g: g["error"] if "error" in g else f"{g['seconds']:.2f}"  # noqa: E731
        lines.append(
            f"| {s['n']:,} | {sec(ours)} | {sec(theirs)} | {_ratio_cell(ours, theirs, 'seconds')} | "
            f"{_mem(ours, 'peak_mib')} | {_mem(theirs, 'peak_mib')} |"
        )
    for lib in ("funcprune", "torch"):
        ok = [s for s in scaling if "error" not in s[lib]]
        if len(ok) >= 2:
            slope = _memory.growth_exponent([s["n"] for s in ok], [s[lib]["seconds"] for s in ok])
            lines.append(
                f"\n{lib}: time grows as n^{slope:.2f} over this range (n log n from 1M to 200M is about n^1.08)."
            )
    return lines


def _huge_lines(huge: dict | None) -> list[str]:
    if huge is None:
        return ["Not run (`--skip-huge` or `--quick`)."]
    if "error" in huge:
        return [f"FAILED: {huge['error']}"]
    return [
        f"funcprune `global_unstructured` L1 0.5 on {huge['entries']:,} float16 entries (17 leaves, "
        f"{huge['entries'] / 2**31:.3f} x 2**31): {huge['seconds']:.1f} s, peak +{huge['peak_mib']:.0f} MiB, "
        f"masks {huge['mask_mib']:.0f} MiB.",
        f"Pruned exactly {huge['pruned']:,} entries (expected round(0.5 * n) = {huge['expected']:,}: "
        f"{'exact' if huge['exact'] else 'WRONG'}); every pruned |w| <= every kept |w| "
        f"({'yes' if huge['ordered'] else 'NO'}; threshold {huge['threshold']:.6g}, float16 ties resolved "
        "by index). torch is not run here: its path concatenates all scores and calls `nonzero`, which "
        "fails past INT_MAX elements, and needs well over this machine's memory.",
    ]


def write(path: str, info: dict, rows, memory, scaling, huge, elapsed: float, quick: bool) -> None:
    """Write the markdown report."""
    lines = [
        "# funcprune vs torch.nn.utils.prune",
        "",
        "Generated by `python -m benchmarks.run" + (" --quick" if quick else "") + f"` in {elapsed:.0f} s.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "Times are medians of interleaved rounds after a warm-up; a ratio is funcprune / reference "
        "(lower is better), the median of the per-round ratios, with their quartiles in brackets "
        "(side-by-side samples share the machine's momentary state, so their ratio is steadier than "
        'a ratio of medians); a median over its target is a MISS, "MISS (within spread)" when '
        "the lower quartile is under the target. The forward rows also count the page faults per "
        "call of each side (a note lists them where any occurred). Every row first checks that both "
        "sides give identical masks (or identical outputs). "
        "Per-layer and iterative rows compare with torch's own mask computation "
        "(`compute_mask`, `PruningContainer.compute_mask`), global rows with "
        "`torch.nn.utils.prune.global_unstructured` on modules (its only entry point), compat rows make "
        "the same module-level calls with both libraries.",
        "",
        "On a machine shared with other work, pass `--passive-omp` (recorded above as "
        "OMP_WAIT_POLICY): with spinning OpenMP threads every parallel op waits for a time slice, "
        "which punishes many short vectorized passes (funcprune) far more than one long single-threaded "
        "`topk` (torch). Measured here under load ~5: per-layer L1 on the MLP took funcprune 890 ms vs "
        "torch 775 ms with the default policy, 49 ms vs 431 ms with PASSIVE.",
        "",
        "## Time",
        "",
    ]
    lines += _timing_table(rows)
    lines += ["", "## Memory (fresh process per case)", ""] + (_memory_table(memory) if memory else ["Not run."])
    lines += [
        "",
        "Peak extra: growth of the peak RSS during the call. Held: RSS still held after it (masks and "
        "anything the library keeps alive). funcprune masks are bool (1 byte per entry); torch's are "
        "float (4 bytes per entry).",
        "",
    ]
    lines += ["## Scaling: global L1 0.8 over 16 float32 leaves", ""]
    lines += (_scaling_table(scaling) + ["", "![scaling](scaling.png)"]) if scaling else ["Not run."]
    lines += ["", "## Past 2**31 entries", ""] + _huge_lines(huge) + [""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(scaling: list[dict], path: str) -> None:
    """Log-log plot of time and peak memory against entries, with an n log n guide."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for lib, style in (("funcprune", "o-"), ("torch", "s--")):
        ok = [s for s in scaling if "error" not in s[lib]]
        ns = [s["n"] for s in ok]
        axes[0].loglog(ns, [s[lib]["seconds"] for s in ok], style, label=lib)
        axes[1].loglog(ns, [max(s[lib]["peak_mib"], 0.1) for s in ok], style, label=lib)
    ok = [s for s in scaling if "error" not in s["funcprune"]]
    if ok:
        n0, t0 = ok[0]["n"], ok[0]["funcprune"]["seconds"]
        ns = [s["n"] for s in ok]
        axes[0].loglog(ns, [t0 * n * math.log(n) / (n0 * math.log(n0)) for n in ns], ":", color="gray", label="n log n")
    axes[0].set(xlabel="prunable entries", ylabel="seconds", title="global L1 0.8: time")
    axes[1].set(xlabel="prunable entries", ylabel="MiB", title="global L1 0.8: peak extra memory")
    for ax in axes:
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
