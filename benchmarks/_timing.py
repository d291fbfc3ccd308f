"""Interleaved timing: every contender runs once per round, in alternating order; medians and per-round ratios.

Each contender is a ``prepare`` callable returning a zero-argument ``run``; ``prepare`` is not
timed, so a contender that mutates its input (torch's module API) gets a fresh one every call.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch

try:
    import resource
except ImportError:  # not on Windows: page faults are then not counted
    resource = None

Prepare = Callable[[], Callable[[], object]]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(prepare: Prepare, number: int, device: torch.device) -> float:
    """Seconds per call, averaged over ``number`` calls of freshly prepared runs."""
    runs = [prepare() for _ in range(number)]
    _sync(device)
    start = time.perf_counter()
    for run in runs:
        run()
    _sync(device)
    return (time.perf_counter() - start) / number


class Timing(NamedTuple):
    """Seconds per call of each contender: the medians, and every round's sample in round order."""

    medians: dict[str, float]
    samples: dict[str, list[float]]

    def paired_ratio(self, ours: str, theirs: str) -> tuple[float, float, float]:
        """Median and quartiles of the per-round ratios ``ours / theirs``.

        Samples taken side by side in one round share the machine's state (load, clock, cache), so
        their ratio is steadier than the ratio of the two medians when that state drifts.
        """
        ratios = sorted(a / b for a, b in zip(self.samples[ours], self.samples[theirs]))
        if len(ratios) < 2:
            return ratios[0], ratios[0], ratios[0]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return statistics.median(ratios), low, high


def interleaved(
    contenders: dict[str, Prepare],
    *,
    rounds: int = 7,
    warmup: int = 1,
    min_sample: float = 0.02,
    budget: float = 60.0,
    min_rounds: int = 3,
    device: torch.device = torch.device("cpu"),
) -> Timing:
    """Seconds per call of each contender, timed in interleaved rounds.

    Args:
      contenders: ``{label: prepare}``; ``prepare()`` returns the zero-argument call to time.
      rounds: samples per contender; the median is reported.
      warmup: untimed calls of each contender first.
      min_sample: a sample repeats a fast call until it lasts about this long.
      budget: elapsed seconds (wall clock, from the first timed round, preparation included) after
        which no new round starts (once ``min_rounds`` ran).
      min_rounds: rounds always run, whatever the budget.
      device: synchronised around every sample when it is a CUDA device.
    """
    numbers = {}
    for label, prepare in contenders.items():
        once = min(_sample(prepare, 1, device) for _ in range(max(warmup, 1)))  # warm-up doubles as calibration
        numbers[label] = max(1, min(1000, int(min_sample / max(once, 1e-9))))
    samples: dict[str, list[float]] = {label: [] for label in contenders}
    order = list(contenders)
    start = time.perf_counter()
    for r in range(rounds):
        if r >= min_rounds and time.perf_counter() - start > budget:
            break  # slow rows (seconds per call): stop at ``min_rounds`` once over budget
        for label in order if r % 2 == 0 else reversed(order):
            samples[label].append(_sample(contenders[label], numbers[label], device))
    return Timing({label: statistics.median(values) for label, values in samples.items()}, samples)


def minor_faults_per_call(prepare: Prepare, calls: int = 5) -> float:
    """Page faults the kernel served per call (memory the allocator had handed back and asked for again)."""
    if resource is None:
        return float("nan")
    runs = [prepare() for _ in range(calls)]
    runs[0]()  # warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for run in runs[1:]:
        run()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (calls - 1)
