"""funcprune vs torch.nn.utils.prune, side by side: ``python -m benchmarks.run [--quick]`` (repository root).

Every comparison first checks that both libraries produce the same masks (or outputs), then
times them interleaved in one process (several rounds after a warm-up) and prints the median
times and the median of the per-round ratios (funcprune / torch, lower is better) with their
quartiles. Memory, the scaling run and the
> 2**31-entry run use a fresh process per case. Results go to ``benchmarks/results.md`` and the
scaling curve to ``benchmarks/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

if "--passive-omp" in sys.argv:  # must precede loading OpenMP; the worker processes inherit it
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from . import _cases, _compat_global, _memory, _module_cases, _report  # noqa: E402
from ._timing import interleaved, minor_faults_per_call  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# glibc hands a freed top of its heap back to the kernel once it passes a threshold, and the next
# call faults those pages in again; these settings keep the heap, as jemalloc and tcmalloc do.
HEAP_KEPT = {"MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_MMAP_THRESHOLD_": str(2**25)}


def _compat():
    try:
        import funcprune.compat as compat

        for name in ("l1_unstructured", "global_unstructured", "ln_structured", "L1Unstructured"):
            getattr(compat, name)
        return compat
    except Exception as err:  # noqa: BLE001 - the compat rows are optional while it is being written
        print(f"(compat rows skipped: funcprune.compat unavailable: {err})")
        return None


def _all_cases(args):
    compat = None if args.no_compat else _compat()
    models = ["resnet18"] if args.quick else ["resnet18", "resnet50", "mlp", "lenet"]
    cases = [c for model in models for c in _cases.functional_cases(model, quick=args.quick)]
    if torch.cuda.is_available():  # CUDA rows: the same mask computations on the GPU, synchronised timing
        cuda = torch.device("cuda")
        cases += [c for model in models[:2] for c in _cases.functional_cases(model, quick=args.quick, device=cuda)]
    cases += _module_cases.forward_cases("mlp", compat)
    if not args.quick:
        cases += _module_cases.forward_cases("resnet18", compat)
    if compat is not None:
        cases += _module_cases.compat_cases(compat, quick=args.quick)
    return [c for c in cases if args.only is None or args.only in f"{c.group} {c.shapes}"]


def time_cases(cases, args):
    """Check, then time every case; one result row each.

    Rows that compare near-equal work (the forward rows) vary more between processes (memory
    placement, allocator state) than within one, so with ``--processes N`` each runs in N fresh
    processes and reports the median process; those with a speed target run once more with
    :data:`HEAP_KEPT`, to tell the cost of page faults from the cost of the work.
    """
    rows = []
    for case in cases:
        if case.count_faults and args.processes > 1:
            row = _in_fresh_processes(case, args)
        else:
            row = _time_case(case, args)
        print(_report.row_line(row), flush=True)
        rows.append(row)
        if case.count_faults and args.processes > 1 and case.target == 1.0 and case.ours_label == "funcprune":
            # The same row with the heap kept on both sides: what remains once page faults are gone.
            row = _in_fresh_processes(case, args, env=HEAP_KEPT)
            print(_report.row_line(row), flush=True)
            rows.append(row)
    return rows


def _row_head(case) -> dict:
    return {
        "group": case.group,
        "shapes": case.shapes,
        "target": case.target,
        "ours": case.ours_label,
        "theirs": case.theirs_label,
    }


def _time_case(case, args) -> dict:
    row = _row_head(case)
    try:
        _cases.check(case)
        row["note"] = case.note
        ours, theirs = _cases.seeded(case.ours, case.seed), _cases.seeded(case.theirs, case.seed)
        rounds = args.rounds if args.quick or case.rounds is None else max(args.rounds, case.rounds)
        timing = interleaved(
            {"ours": ours.prepare, "theirs": theirs.prepare},
            rounds=rounds,
            min_sample=case.min_sample,
            device=case.device,
        )
        ratio, low, high = timing.paired_ratio("ours", "theirs")
        row.update(
            ours_s=timing.medians["ours"],
            theirs_s=timing.medians["theirs"],
            ratio=ratio,
            ratio_low=low,
            ratio_high=high,
        )
        if case.count_faults:
            row.update(
                ours_faults=minor_faults_per_call(ours.prepare), theirs_faults=minor_faults_per_call(theirs.prepare)
            )
    except Exception as err:  # noqa: BLE001 - a broken row is reported, the others still run
        row["error"] = f"{type(err).__name__}: {err}"
    return row


def _in_fresh_processes(case, args, env: dict[str, str] | None = None) -> dict:
    """The row timed in ``args.processes`` fresh interpreters (with ``env`` added to their
    environment): the median process, the range in brackets."""
    spec = {
        "forward_row": case.group,
        "model": case.shapes,
        "compat": case.ours_label == "compat",
        "rounds": args.rounds,
        "quick": args.quick,
        "threads": args.threads,
    }
    # Alternate which side's tensors are allocated first (see _module_cases._pruned_pair).
    runs = [_memory.run_worker(dict(spec, ours_first=i % 2 == 0), env=env) for i in range(args.processes)]
    head = _row_head(case)
    if env:
        head["group"] += ", glibc heap kept"
    failed = [r for r in runs if "error" in r]
    if failed:  # a worker that crashed returns only its error
        return dict(head, error=failed[0]["error"])
    runs.sort(key=lambda r: r["ratio"])
    row = dict(
        runs[len(runs) // 2],
        ratio=statistics.median(r["ratio"] for r in runs),
        ratio_low=runs[0]["ratio"],
        ratio_high=runs[-1]["ratio"],
        **head,
    )
    row["note"] = (
        f"median of {len(runs)} fresh processes, brackets: the lowest and highest process "
        f"(per-process ratios {', '.join(format(r['ratio'], '.3f') for r in runs)})"
    )
    if env:
        row["note"] += "; both sides run with " + " ".join(f"{k}={v}" for k, v in env.items())
    return row


def _forward_row_worker(spec: dict) -> dict:
    """One forward row, timed in this (fresh) process."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    compat = _compat() if spec["compat"] else None
    cases = _module_cases.forward_cases(spec["model"], compat, spec["ours_first"])
    case = next(c for c in cases if c.group == spec["forward_row"])
    args = argparse.Namespace(rounds=spec["rounds"], quick=spec["quick"])
    return _time_case(case, args)


def memory_rows(args):
    """Peak and held memory of global L1 0.8, each library in a fresh process."""
    rows = []
    for model in ["resnet18"] if args.quick else ["resnet18", "resnet50"]:
        got = {
            lib: _memory.run_worker({"model": model, "lib": lib, "amount": 0.8, "threads": torch.get_num_threads()})
            for lib in ("funcprune", "torch")
        }
        rows.append({"model": model, **got})
        print(_report.memory_line(model, got), flush=True)
    return rows


def scaling_rows(args):
    """Time and peak memory of global L1 0.8 from 1M to 200M entries (16 float32 leaves)."""
    rows = []
    for n in _memory.scaling_sizes(args.quick):
        got = {
            lib: _memory.run_worker(
                {"model": "flat", "n": n, "lib": lib, "amount": 0.8, "threads": torch.get_num_threads()}
            )
            for lib in ("funcprune", "torch")
        }
        rows.append({"n": n, **got})
        print(_report.scaling_line(n, got), flush=True)
    return rows


def huge_row():
    """Global L1 0.5 on float16 weights with more than 2**31 entries, funcprune only, exact count checked."""
    spec = {
        "model": "flat",
        "n": _memory.HUGE_TOTAL,
        "leaves": 17,
        "dtype": "float16",
        "lib": "funcprune",
        "amount": 0.5,
        "verify": True,
        "threads": torch.get_num_threads(),
    }
    got = _memory.run_worker(spec, timeout=1800)
    print("huge:", json.dumps(got), flush=True)
    return got


def machine(device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "default"),
        "load average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes (under two minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contender (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every case")
    parser.add_argument(
        "--passive-omp",
        action="store_true",
        help="OMP_WAIT_POLICY=PASSIVE: on a machine busy with other work, spinning OpenMP "
        "threads make every parallel op wait for a time slice",
    )
    parser.add_argument("--only", default=None, help="run only the rows whose 'group shapes' contain this")
    parser.add_argument("--no-compat", action="store_true", help="skip the funcprune.compat rows")
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="fresh processes per forward row, median reported (default 4; 1 with --quick)",
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the fresh-process memory rows")
    parser.add_argument("--skip-scaling", action="store_true", help="skip the 1M..200M scaling run")
    parser.add_argument("--skip-huge", action="store_true", help="skip the > 2**31-entry run (needs ~8 GiB)")
    parser.add_argument("--out", default=os.path.join(HERE, "results.md"), help="markdown report path")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(
            json.dumps(
                _forward_row_worker(spec)
                if "forward_row" in spec
                else _compat_global.worker(spec)
                if "compat_global" in spec
                else _memory.worker(spec)
            )
        )
        return 0
    args.rounds = args.rounds or (3 if args.quick else 15)
    args.processes = args.processes or (1 if args.quick else 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    info = machine(devices[-1])
    print(_report.header(info))
    rows = time_cases(_all_cases(args), args)
    memory = [] if args.skip_memory or args.only else memory_rows(args)
    compat_global = (
        []
        if args.skip_memory or args.only or args.no_compat
        else _compat_global.rows(
            processes=1 if args.quick else 3, cases=_compat_global.ROWS[:1] if args.quick else _compat_global.ROWS
        )
    )
    scaling = [] if args.skip_scaling or args.only else scaling_rows(args)
    huge = None if args.skip_huge or args.quick or args.only else huge_row()
    elapsed = time.perf_counter() - start
    _report.write(args.out, info, rows, memory, scaling, huge, elapsed, quick=args.quick)
    if compat_global:
        with open(args.out, "a") as f:
            f.write(_compat_global.markdown(compat_global))
    if scaling:
        _report.plot(scaling, os.path.join(os.path.dirname(args.out), "scaling.png"))
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    failed = [r for r in rows if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
