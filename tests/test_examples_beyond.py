"""Smoke test of examples/gradual_pruning.py through its fast entry point."""

import importlib.util
import pathlib

import pytest

pytest.importorskip("sklearn")


def load_example():
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "gradual_pruning.py"
    spec = importlib.util.spec_from_file_location("gradual_pruning", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradual_pruning_example_runs_and_exports():
    result = load_example().main(steps=40, final_sparsity=0.8, verbose=False)
    assert result["pruned"] == round(0.8 * result["weights"])  # ERK counts hit the global target exactly
    assert result["per_layer"]["4.weight"] < result["per_layer"]["0.weight"]  # ERK spares the small layer
    assert result["csr_matches"] and result["masks_round_trip"]
    assert result["sparse_bytes"] < 0.4 * result["dense_bytes"]
    assert result["test_accuracy"] > 0.25  # well above the 0.1 of chance, after only 40 steps
