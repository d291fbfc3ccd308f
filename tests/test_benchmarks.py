"""Smoke tests of the benchmark suite's building blocks (no timing asserts)."""

import math
import os

import pytest
import torch

from benchmarks import _cases, _memory, _models, _module_cases, _report
from benchmarks._timing import Timing, interleaved, minor_faults_per_call


def test_models_have_the_advertised_sizes():
    assert sum(math.prod(s) for s in _models.resnet50_shapes().values()) == 25_502_912
    resnet = _models.build("resnet18")
    names = _models.prunable_names(resnet)
    params = dict(resnet.named_parameters())
    assert len(names) == 21 and sum(params[n].numel() for n in names) == 11_678_912
    assert resnet(_models.example_input("resnet18", 1)[:, :, :64, :64]).shape == (1, 1000)
    for name, outputs in (("mlp", 10), ("lenet", 10)):
        model = _models.build(name)
        assert model(_models.example_input(name, 2)).shape == (2, outputs)
    assert sum(w.numel() for w in _models.weights("mlp").values()) == 4 * 1024 * 1024 + 10 * 1024


def test_models_are_seeded():
    a, b = _models.weights("lenet", seed=3), _models.weights("lenet", seed=3)
    assert all(torch.equal(a[n], b[n]) for n in a)
    flat = _models.flat_weights(1003, leaves=4)
    assert sum(w.numel() for w in flat.values()) == 1003 and len(flat) == 4


def test_every_lenet_case_has_parity_with_torch():
    cases = _cases.functional_cases("lenet")
    assert {c.group for c in cases} >= {"l1_unstructured 0.3, per layer", "global_unstructured L1 0.8"}
    for case in cases:
        _cases.check(case)


def test_parity_check_catches_a_different_mask():
    case = _cases.functional_cases("lenet")[0]
    flipped = _cases.Side(case.theirs.prepare, lambda masks: {n: ~m.bool() for n, m in masks.items()})
    with pytest.raises(AssertionError, match="masks differ"):
        _cases.check(_cases.Case(case.group, case.shapes, case.ours, flipped))


def test_random_cases_reseed_both_sides():
    weights = {n: w for n, w in _models.weights("lenet").items() if w.dim() > 1}
    import torch.nn.utils.prune as torch_prune

    import funcprune as fp

    ours = _cases.Side(lambda: lambda: fp.prune(weights, fp.random_unstructured, 0.4), lambda m: m)
    theirs = _cases._torch_per_tensor(weights, lambda: torch_prune.RandomUnstructured(0.4))
    _cases.check(_cases.Case("random", "lenet", ours, theirs, seed=5))
    a = _cases.seeded(ours, 5).prepare()()
    b = _cases.seeded(ours, 5).prepare()()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_interleaved_timer_reports_a_median_per_contender():
    calls = {"a": 0, "b": 0}

    def contender(label):
        def prepare():
            def run():
                calls[label] += 1

            return run

        return prepare

    timing = interleaved({"a": contender("a"), "b": contender("b")}, rounds=3, min_sample=0.0)
    assert set(timing.medians) == {"a", "b"} and all(v >= 0 for v in timing.medians.values())
    assert [len(v) for v in timing.samples.values()] == [3, 3]
    assert calls["a"] >= 4 and calls["b"] >= 4


def test_interleaved_budget_counts_elapsed_time_not_just_the_timed_calls():
    import time

    def slow_to_prepare():  # the call itself is instant; preparing it takes 20 ms
        time.sleep(0.02)
        return lambda: None

    timing = interleaved({"a": slow_to_prepare}, rounds=10, min_rounds=2, min_sample=0.0, budget=0.01)
    assert len(timing.samples["a"]) == 2  # over budget (elapsed >= 40 ms) once min_rounds ran


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # a drifting machine: the medians' ratio (2.0 / 4.0) hides that "a" is 0.9x "b" in every round
    timing = Timing({"a": 0.0, "b": 0.0}, {"a": [0.9, 1.8, 2.7, 3.6, 4.5], "b": [1.0, 2.0, 3.0, 4.0, 5.0]})
    ratio, low, high = timing.paired_ratio("a", "b")
    assert ratio == pytest.approx(0.9) and low == pytest.approx(0.9) and high == pytest.approx(0.9)
    timing = Timing({}, {"a": [1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0] * 5})
    assert timing.paired_ratio("a", "b") == pytest.approx((3.0, 2.0, 4.0))


def test_minor_faults_per_call_counts_fresh_pages():
    def prepare():
        return lambda: bytearray(64 * 2**20)  # 64 MiB: mmap-ed and zero-filled on every call

    assert minor_faults_per_call(prepare) > 1000
    assert minor_faults_per_call(lambda: lambda: None) < 100


def test_memory_worker_checks_exact_counts_with_small_chunks():
    got = _memory.worker(
        {
            "model": "flat",
            "n": 10_007,
            "leaves": 3,
            "dtype": "float16",
            "lib": "funcprune",
            "amount": 0.5,
            "chunk": 997,
            "verify": True,
        }
    )
    assert got["exact"] and got["ordered"] and got["pruned"] == round(0.5 * 10_007)
    assert got["mask_mib"] == pytest.approx(10_007 / 2**20)


def test_growth_exponent_recovers_power_laws():
    sizes = [10**6, 10**7, 10**8]
    assert _memory.growth_exponent(sizes, [n * 1e-8 for n in sizes]) == pytest.approx(1.0)
    assert 1.0 < _memory.growth_exponent(sizes, [n * math.log(n) for n in sizes]) < 1.15


def test_report_writes_tables(tmp_path):
    rows = [
        {
            "group": "g",
            "shapes": "s",
            "target": 0.5,
            "ours": "funcprune",
            "theirs": "torch",
            "ours_s": 0.01,
            "theirs_s": 0.04,
            "ratio": 0.25,
        },
        {
            "group": "bad",
            "shapes": "s",
            "target": None,
            "ours": "funcprune",
            "theirs": "torch",
            "error": "AssertionError: masks differ",
        },
    ]
    assert "ok" in _report.row_line(rows[0]) and "ERROR" in _report.row_line(rows[1])
    mem = {
        "funcprune": {"peak_mib": 10.0, "held_mib": 5.0, "mask_mib": 2.0},
        "torch": {"peak_mib": 100.0, "held_mib": 50.0, "mask_mib": 8.0},
    }
    scaling = [{"n": n, **mem} for n in (10**6, 10**7)]
    for s in scaling:
        s["funcprune"] = dict(s["funcprune"], seconds=s["n"] * 1e-8)
        s["torch"] = {"error": "timed out"}
    path = tmp_path / "results.md"
    _report.write(str(path), {"cores": 2}, rows, [{"model": "m", **mem}], scaling, None, 1.0, quick=True)
    text = path.read_text()
    assert "| g | s | funcprune 10.00 | torch 40.00 | 0.250 | <= 0.50 | ok |" in text
    assert "| m | 10 | 100 | 0.100 |" in text and "timed out" in text and "ERROR" in text
    _report.plot(scaling, str(tmp_path / "scaling.png"))
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_a_median_over_its_target_is_a_miss_even_within_the_spread():
    row = {
        "group": "fwd",
        "shapes": "s",
        "target": 1.0,
        "ours": "funcprune",
        "theirs": "torch hooks",
        "ours_s": 0.1,
        "theirs_s": 0.1,
        "ratio_low": 0.98,
        "ratio": 1.01,
        "ratio_high": 1.03,
        "ours_faults": 0.0,
        "theirs_faults": 12.0,
    }
    line = _report.row_line(row)
    assert "ratio 1.010 (0.980-1.030) <= 1.00 MISS (within spread)" in line
    assert "page faults per call: funcprune 0, torch hooks 12" in line
    assert _report.row_line(dict(row, ratio_low=1.005)).split("\n")[0].endswith("MISS")
    assert _report.row_line(dict(row, ratio=0.99)).split("\n")[0].endswith("ok")
    assert _report.row_line(dict(row, ratio=1.0004)).split("\n")[0].endswith("ok")  # 1.000 as printed
    assert "page faults" not in _report.row_line(dict(row, theirs_faults=0.0))


@pytest.mark.parametrize("ours_first", [True, False])
def test_forward_rows_give_torchs_outputs_bit_for_bit_in_either_allocation_order(ours_first):
    import funcprune.compat as compat

    cases = _module_cases.forward_cases("lenet", compat, ours_first)
    assert len(cases) == 6 and all(case.count_faults for case in cases)
    for case in cases:
        case.check_fn()  # raises unless funcprune's and the reference's outputs are equal
        case.ours.prepare()()
        case.theirs.prepare()()


def test_fresh_process_rows_report_the_median_process_and_worker_errors(monkeypatch):
    import argparse

    from benchmarks import run

    case = _cases.Case("fwd", "lenet", None, None, 1.0, count_faults=True)
    args = argparse.Namespace(processes=4, rounds=3, quick=False, threads=None)
    ratios = iter([1.04, 0.98, 1.00, 1.02])
    specs = []

    def worker(spec, env=None):
        specs.append(spec)
        return {
            "group": "fwd",
            "shapes": "lenet",
            "target": 1.0,
            "ours": "funcprune",
            "theirs": "torch hooks",
            "ours_s": 0.1,
            "theirs_s": 0.1,
            "ratio": next(ratios),
        }

    monkeypatch.setattr(run._memory, "run_worker", worker)
    row = run._in_fresh_processes(case, args)
    assert row["ratio"] == pytest.approx(1.01) and (row["ratio_low"], row["ratio_high"]) == (0.98, 1.04)
    assert [s["ours_first"] for s in specs] == [True, False, True, False]
    monkeypatch.setattr(run._memory, "run_worker", lambda spec, env=None: {"error": "exit 1: boom"})
    assert "ERROR exit 1: boom" in _report.row_line(run._in_fresh_processes(case, args))


def test_forward_rows_with_a_speed_target_are_also_timed_with_the_heap_kept(monkeypatch):
    import argparse

    from benchmarks import run

    timed = _cases.Case("training step", "lenet", None, None, 1.0, count_faults=True)
    reference = _cases.Case(
        "inference, torch.func", "lenet", None, None, None, ours_label="torch.func", count_faults=True
    )
    envs = []

    def worker(spec, env=None):
        envs.append((spec["forward_row"], env))
        return {"group": spec["forward_row"], "shapes": "lenet", "ours_s": 0.1, "theirs_s": 0.1, "ratio": 1.0}

    monkeypatch.setattr(run._memory, "run_worker", worker)
    args = argparse.Namespace(processes=2, rounds=3, quick=False, threads=None)
    rows = run.time_cases([timed, reference], args)
    assert [r["group"] for r in rows] == ["training step", "training step, glibc heap kept", "inference, torch.func"]
    assert (
        envs
        == [("training step", None)] * 2
        + [("training step", run.HEAP_KEPT)] * 2
        + [("inference, torch.func", None)] * 2
    )
    assert "MALLOC_TRIM_THRESHOLD_=" in rows[1]["note"]


def test_run_worker_adds_env_to_the_workers_environment(monkeypatch):
    seen = {}

    def fake_run(cmd, env=None, cwd=None, **kwargs):
        seen["env"], seen["cmd"], seen["cwd"] = env, cmd, cwd
        return type("Done", (), {"returncode": 0, "stdout": '{"ok": 1}', "stderr": ""})()

    monkeypatch.setattr(_memory.subprocess, "run", fake_run)
    assert _memory.run_worker({"lib": "torch"}, env={"MALLOC_TRIM_THRESHOLD_": "7"}) == {"ok": 1}
    assert seen["env"]["MALLOC_TRIM_THRESHOLD_"] == "7" and seen["env"]["PATH"] == os.environ["PATH"]
    # the worker is the package's module, run from the directory that holds ``benchmarks``
    assert seen["cmd"][1:3] == ["-m", "benchmarks.run"]
    assert os.path.isfile(os.path.join(seen["cwd"], "benchmarks", "run.py"))
    _memory.run_worker({"lib": "torch"})
    assert seen["env"] is None  # no extra variables: the worker inherits this environment unchanged


class _TinyResidualCNN(torch.nn.Module):
    """conv-BN-ReLU, a residual basic block, pooling and a classifier: the coupling of a ResNet, tiny."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(x.mean(dim=(2, 3)))


def _check_structural_result(bench, result, amount):
    row = result["amounts"][amount]
    assert row["max_diff"] <= 1e-5 * max(1.0, row["out_scale"])  # the shrunk model is the masked model
    assert 0 < row["kept"] < 1
    assert row["params"] < result["params"] and row["flops"] < result["flops"]
    assert row["tp_params"] < result["params"] and row["tp_flops"] < result["flops"]
    assert min(row["prune_s"], row["shrink_s"], row["tp_build_s"], row["tp_step_s"], result["groups_s"]) > 0
    for lat in result["latency"].values():
        assert set(lat["ms"]) == {"dense", f"masked {amount:.0%}", f"shrunk {amount:.0%}", f"TP {amount:.0%}"}
        assert set(lat["speedup"]) == set(lat["ms"]) - {"dense"} and lat["rounds"] == 1
    text = bench.report([result], "a machine", "python -m benchmarks.structural", 1.0, "1 round")
    rows = [line for line in text.splitlines() if line.startswith(f"| {result['model']} |")]
    assert len(rows) == 2 + len(result["latency"])  # size, time and one latency row per batch size
    headers = [line for line in text.splitlines() if line.startswith("| model |")]
    assert sorted(line.count("|") for line in rows) == sorted(
        h.count("|") for h in headers for _ in range(len(result["latency"]) if "| batch |" in h else 1)
    )


def test_structural_benchmark_measures_a_tiny_cnn_and_torch_pruning_alike():
    pytest.importorskip("torch_pruning")
    from benchmarks import structural as bench

    def build():
        torch.manual_seed(0)
        return _TinyResidualCNN().eval()

    inputs = lambda batch, quick: ((torch.randn(batch, 3, 8, 8),), {})  # noqa: E731
    spec = bench.Spec("tiny", build, inputs, bench._classifier_ignored)
    result = bench.measure(spec, quick=True, amounts=(0.5,), batches=(1, 2), rounds=1, repeats=1, log=lambda s: None)
    assert result["groups"] == 2 and result["amounts"][0.5]["kept"] == 0.5  # the residual width, the block's inner
    assert result["params"] == sum(p.numel() for p in build().parameters())
    _check_structural_result(bench, result, 0.5)


@pytest.mark.slow  # a transformers model
def test_structural_benchmark_bert_spec_prunes_heads_and_mlp_in_both_libraries(monkeypatch):
    pytest.importorskip("torch_pruning")
    pytest.importorskip("transformers")
    from benchmarks import structural as bench

    monkeypatch.setattr(
        bench,
        "BERT",
        dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=100),
    )
    result = bench.measure(
        bench.SPECS["bert-small"], quick=True, amounts=(0.5,), batches=(1,), rounds=1, repeats=1, log=lambda s: None
    )
    assert result["groups"] == 2  # the heads and the MLP's inner width of the one layer
    _check_structural_result(bench, result, 0.5)
