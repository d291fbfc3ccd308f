"""examples/gradual_pruning.py through its fast entry point: exact counts, export, checkpoint in ``out``."""

import os

import pytest

pytest.importorskip("sklearn")

from examples import gradual_pruning  # noqa: E402


def test_gradual_pruning_example_runs_and_exports(tmp_path):
    tracked = sorted(os.listdir(os.path.dirname(gradual_pruning.__file__)))
    result = gradual_pruning.main(steps=40, final_sparsity=0.8, verbose=False, out=str(tmp_path))
    assert sorted(os.listdir(os.path.dirname(gradual_pruning.__file__))) == tracked
    assert result["pruned"] == round(0.8 * result["weights"])  # ERK counts hit the global target exactly
    assert result["per_layer"]["4.weight"] < result["per_layer"]["0.weight"]  # ERK spares the small layer
    assert result["csr_matches"] and result["masks_round_trip"]
    assert result["mask_checkpoint"] == str(tmp_path / "masks.pt")
    assert os.path.getsize(result["mask_checkpoint"]) == result["mask_checkpoint_bytes"]
    assert result["sparse_bytes"] < 0.4 * result["dense_bytes"]
    assert result["test_accuracy"] > 0.25  # well above the 0.1 of chance, after only 40 steps
