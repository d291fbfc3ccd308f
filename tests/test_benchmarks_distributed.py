"""benchmarks/distributed.py's parts: tree sizes, the collective byte counts, the gather baseline, the table."""

import math

import pytest
import torch

if not torch.distributed.is_available():
    pytest.skip("torch without distributed support", allow_module_level=True)

from benchmarks import distributed as bench  # noqa: E402
from tests import _dist_bench  # noqa: E402
from tests._dist import run_ranks  # noqa: E402


def test_trees_have_the_advertised_sizes():
    assert sum(math.prod(s) for s in bench.transformer_shapes().values()) == 12 * 12 * 768 * 768
    assert len(bench.TREES["resnet50"][1]()) == 54
    assert bench.MOON_LEAVES * math.prod(bench.MOON_SHAPE) == 4_000_000_000


@pytest.mark.slow  # multi-process: gloo ranks
def test_traffic_counts_received_bytes_and_the_gather_baseline_is_exact():
    for rank, out in enumerate(run_ranks(_dist_bench.traffic_and_gather, 2)):
        assert out["all_reduce"] == (1, 65537 * 8), rank
        assert out["all_gather"] == (1, 2 * 10 * 4), rank
        calls, received = out["full_tensor"]
        assert calls == 3 and received >= (35 + 24 + 9) * 4, (rank, out["full_tensor"])  # padded shards
        assert out["leaves_equal"] and out["gather_masks_equal"] and out["digest_equal"], rank


def test_table_reports_ratios_and_identity():
    rows = [
        dict(
            tree="resnet50",
            method=m,
            world=w,
            seconds=s,
            peak_mib=p,
            mask_mib=5.0,
            bytes=b,
            calls=c,
            digest=d,
            entries=25_000_000,
        )
        for m, w, s, p, b, c, d in (
            ("single", 1, 1.0, 30.0, 0, 0, [1, 2]),
            ("funcprune", 2, 2.0, 10.0, 1 << 20, 3, [1, 2]),
            ("gather", 2, 4.0, 100.0, 100 << 20, 54, [1, 2]),
            ("funcprune", 4, 2.0, 10.0, 1 << 20, 3, [1, 3]),
        )
    ]
    lines = bench.table(rows).splitlines()
    assert len(lines) == 4
    assert (
        "| 2 | 2.00 / 10.0 (5.0) / 1.00 MiB (3) | 4.00 / 100.0 / 100.00 MiB | 0.50x | 0.10x | 0.0100x | 2.00x | yes |"
        in lines[2]
    )
    assert lines[3].endswith("| NO |")
