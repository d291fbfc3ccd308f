"""Smoke tests of the multi-mask / functional-training examples on a reduced budget."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

pytest.importorskip("sklearn")


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_functional_training(capsys):
    rows = load("functional_training").main(steps=24, rounds=3, target=0.8)
    labels = [row["label"] for row in rows]
    iterative = [f"iterative, round {r}" for r in (1, 2, 3)]
    assert labels == ["dense", "one-shot, pruned", "one-shot, fine-tuned"] + iterative
    assert rows[0]["sparsity"] == 0.0
    assert abs(rows[1]["sparsity"] - 0.8) < 1e-3 and abs(rows[-1]["sparsity"] - 0.8) < 1e-3
    sparsities = [row["sparsity"] for row in rows[3:]]
    assert sparsities == sorted(sparsities)
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows)
    assert "iterative, round 3" in capsys.readouterr().out


def test_lottery_ticket(tmp_path):
    rows = load("lottery_ticket").main(rounds=2, steps=8, amount=0.5, out=str(tmp_path))
    assert [row["round"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert abs(row["sparsity"] - (1 - 0.5 ** row["round"])) < 1e-3
    png = tmp_path / "lottery_ticket.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "lottery_ticket.md").read_text().splitlines()
    assert table[0].startswith("| round | sparsity | ticket") and len(table) == 2 + len(rows)


def test_multi_mask(capsys):
    result = load("multi_mask").main(steps=4, seeds=(0, 1), sparsities=(0.5, 0.9))
    assert result["max_diff"] < 1e-9
    assert len(result["accuracy"]) == 4
    assert "faster vmapped" in capsys.readouterr().out


def test_multi_mask_benchmark_contenders_agree():
    """benchmarks/multi_mask.py: every timed contender computes what the loop computes (small K)."""
    import sys

    import torch

    bench_dir = os.path.join(os.path.dirname(EXAMPLES), "benchmarks")
    sys.path.insert(0, bench_dir)
    try:
        spec = importlib.util.spec_from_file_location("bench_multi_mask", os.path.join(bench_dir, "multi_mask.py"))
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
    finally:
        sys.path.remove(bench_dir)
    for grad in (False, True):
        contenders = bench.contenders("lenet", 3, grad)
        assert "loop" in contenders and ("torch loop" in contenders) != grad
        with torch.set_grad_enabled(grad):
            bench._check(contenders)
