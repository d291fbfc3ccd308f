"""examples/tutorial.py (PyTorch's pruning tutorial) gives torch's models after every step."""

import importlib.util
import pathlib

import torch
import torch.nn.utils.prune as torch_prune

import funcprune.compat as prune

_PATH = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tutorial.py"
_spec = importlib.util.spec_from_file_location("tutorial", _PATH)
tutorial = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tutorial)


def _assert_equal(a, b, where):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_every_tutorial_step_matches_torch():
    ours, theirs = tutorial.run(prune, seed=3), tutorial.run(torch_prune, seed=3)
    assert [s for s, _ in ours] == [s for s, _ in theirs] and len(ours) == 8
    for (step, a), (_, b) in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key], f"{step}: {key}")


def test_tutorial_main_runs(capsys):
    tutorial.main([])
    out = capsys.readouterr().out
    assert "conv1.weight_orig, conv1.weight_mask" in out and "sparsity in Linear" in out
