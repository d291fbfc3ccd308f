"""Timing for the examples: medians of interleaved repeats, and a word on what they depend on.

A single wall-clock time swings with whatever else the machine runs. The examples time their
contenders in rounds, each contender once per round in alternating order, and print the median
per contender and the median of the per-round ratios (with its quartiles): samples taken side by
side share the machine's state, so their ratio is steadier than either time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

DEPENDS = (
    "times depend on this machine: its cores, what else it runs and torch's thread count "
    "(torch.get_num_threads()); the ratio, taken within each round, varies less"
)


class Rounds:
    """Seconds per call of each contender, one sample per round, in alternating order."""

    def __init__(self, names) -> None:
        self.order = list(names)
        self.samples: dict[str, list[float]] = {name: [] for name in self.order}

    def run(self, calls: dict[str, Callable[[], object]]) -> None:
        """Time one round: each call once, the order reversed every other round."""
        order = self.order if len(self.samples[self.order[0]]) % 2 == 0 else self.order[::-1]
        for name in order:
            start = time.perf_counter()
            calls[name]()
            self.samples[name].append(time.perf_counter() - start)

    def median(self, name: str) -> float:
        """The median seconds of ``name``."""
        return statistics.median(self.samples[name])

    def total(self, name: str) -> float:
        """The summed seconds of ``name`` over all rounds."""
        return sum(self.samples[name])

    def ratio(self, slow: str, fast: str) -> tuple[float, float, float]:
        """Median and quartiles of the per-round ratios ``slow / fast`` (how many times faster ``fast`` is)."""
        ratios = sorted(a / b for a, b in zip(self.samples[slow], self.samples[fast]))
        if len(ratios) < 2:
            return ratios[0], ratios[0], ratios[0]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return statistics.median(ratios), low, high
