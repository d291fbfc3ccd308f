"""The examples on a reduced budget: what they print and return is checked against numbers
recomputed here independently (exact pruned counts, accuracies from plain ``nn.Module`` calls)."""

import os

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from examples import _digits, functional_training, lottery_ticket, multi_mask, quickstart  # noqa: E402
from examples._models import LeNet  # noqa: E402

EXAMPLES = os.path.dirname(os.path.abspath(_digits.__file__))


def masked_accuracy(params, masks, x, y) -> float:
    """Test accuracy of the MLP with ``params * masks`` loaded into a plain module (no funcprune call)."""
    model = _digits.make_model().to(next(iter(params.values())).dtype)
    masks = masks or {}
    model.load_state_dict({n: p * masks[n] if n in masks else p for n, p in params.items()})
    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).float().mean())


def test_quickstart_logits_are_the_masked_modules_and_counts_add_up(capsys):
    result = quickstart.main()
    masks, params = result["masks"], result["params"]
    out = capsys.readouterr().out.splitlines()
    pruned = sum(int((~m).sum()) for m in masks.values())
    total = sum(p.numel() for p in params.values())
    assert out[-2] == f"global sparsity: {pruned / total:.1%} of {total} parameters ({pruned} pruned)"
    assert int((~masks["conv1.bias"]).sum()) == 3
    kept_channels = masks["conv1.weight"].flatten(1).any(dim=1)
    assert int(kept_channels.sum()) == 3  # ln_structured 0.5 of 6 output channels
    torch.manual_seed(0)  # the example's draws: its init, its random mask, then its input
    model = LeNet()
    torch.rand_like(params["conv1.weight"])
    x = torch.randn(8, 1, 28, 28)
    model.load_state_dict({n: p * masks[n] if n in masks else p for n, p in params.items()})
    with torch.no_grad():
        assert torch.allclose(model(x), result["logits"], rtol=0, atol=1e-6)


def test_functional_training(capsys):
    rows = functional_training.main(steps=24, rounds=3, target=0.8)
    labels = [row["label"] for row in rows]
    assert labels == ["dense", "one-shot, pruned", "one-shot, fine-tuned"] + [
        f"iterative, round {r}" for r in (1, 2, 3)
    ]
    n = rows[0]["weights"]
    assert n == 64 * 128 + 128 * 64 + 64 * 10
    assert rows[0]["pruned"] == 0
    assert rows[1]["pruned"] == rows[2]["pruned"] == round(0.8 * n)  # one-shot: exactly the requested amount
    survivors, per_round = n, 1 - (1 - 0.8) ** (1 / 3)  # the example's per-round fraction
    for row in rows[3:]:  # every round prunes round(per_round * survivors) of the survivors
        survivors -= round(per_round * survivors)
        assert row["pruned"] == n - survivors
    for before, after in zip(rows[3:], rows[4:]):  # iterative masks are nested
        assert all(bool((after["masks"][k] <= before["masks"][k]).all()) for k in after["masks"])
    _, _, x_test, y_test = _digits.load_digits(0)
    printed = capsys.readouterr().out.splitlines()[1:]
    for row, line in zip(rows, printed):
        acc = masked_accuracy(row["params"], row["masks"], x_test, y_test)
        assert acc == pytest.approx(row["accuracy"], abs=1e-6)
        assert line == f"{row['label']:<24}{row['pruned'] / n:>10.1%}{acc:>11.1%}"


def test_lottery_ticket_counts_and_outputs(tmp_path):
    tracked = sorted(os.listdir(EXAMPLES))
    rows = lottery_ticket.main(rounds=2, steps=8, amount=0.5, out=str(tmp_path / "out"))
    assert sorted(os.listdir(EXAMPLES)) == tracked  # nothing written next to the examples
    n = 64 * 128 + 128 * 64 + 64 * 10
    pruned = 0
    for r, row in enumerate(rows):
        assert row["round"] == r and row["pruned"] == pruned and row["sparsity"] == pruned / n
        pruned += round(0.5 * (n - pruned))  # global scope: half of the survivors, exactly
    png = tmp_path / "out" / "lottery_ticket.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "out" / "lottery_ticket.md").read_text().splitlines()
    assert table[0] == "| round | sparsity | ticket | random reinit | random mask |"
    for row, line in zip(rows, table[2:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == [str(row["round"]), f"{row['sparsity']:.1%}"] + [
            f"{row[v]:.1%}" for v in lottery_ticket.VARIANTS
        ]


def test_multi_mask_subnetworks_prune_their_own_amounts_and_match_the_loop(capsys):
    result = multi_mask.main(steps=4, seeds=(0, 1), sparsities=(0.5, 0.9))
    assert result["max_diff"] < 1e-9
    # timings: medians of the per-step samples, the speedup the median of per-step ratios, and a word
    # on what they depend on (a single total swings with the machine's load)
    low, median, high = result["speedup"][1], result["speedup"][0], result["speedup"][2]
    assert 0 < low <= median <= high and 0 < result["vmapped_step_s"] <= result["vmapped_s"]
    printed = capsys.readouterr().out
    assert "median of 4" in printed and f"{median:.1f}x faster (quartiles {low:.1f}-{high:.1f}x)" in printed
    assert "times depend on this machine" in printed
    masks, params = result["masks"], result["params"]
    n = sum(m[0].numel() for m in masks.values())
    assert result["amounts"] == [0.5, 0.9, 0.5, 0.9]
    _, _, x_test, y_test = _digits.load_digits(0)
    for k, amount in enumerate(result["amounts"]):
        assert sum(int((~m[k]).sum()) for m in masks.values()) == round(amount * n)  # per-subnetwork exact count
        acc = masked_accuracy(
            {name: p[k] for name, p in params.items()},
            {name: m[k] for name, m in masks.items()},
            x_test.double(),
            y_test,
        )
        assert acc == pytest.approx(result["accuracy"][k], abs=1e-6)


def test_multi_mask_benchmark_contenders_agree():
    """benchmarks/multi_mask.py: every timed contender computes what the loop computes (small K)."""
    from benchmarks import multi_mask as bench

    for grad in (False, True):
        contenders = bench.contenders("lenet", 3, grad)
        assert "loop" in contenders and ("torch loop" in contenders) != grad
        with torch.set_grad_enabled(grad):
            bench._check(contenders)


@pytest.mark.slow  # a torchvision model
def test_structural_example_shrinks_resnet18_to_the_masked_model_and_reloads_it(tmp_path, capsys):
    pytest.importorskip("torchvision")
    import copy

    from examples import structural

    tracked = sorted(os.listdir(EXAMPLES))
    result = structural.main(out=str(tmp_path), quick=True)
    assert sorted(os.listdir(EXAMPLES)) == tracked  # outputs go to --out only
    x, y = result["test"]
    model, small, tuned, masks = result["model"], result["small"], result["tuned"], result["masks"]
    plain = copy.deepcopy(model)  # the masked model as a plain module: params * masks loaded
    plain.load_state_dict({n: p * masks[n] if n in masks else p for n, p in model.state_dict().items()})
    with torch.no_grad():
        masked_out, small_out = plain.eval()(x), small.eval()(x)
        acc = {
            "dense": float((model(x).argmax(1) == y).float().mean()),
            "masked": float((masked_out.argmax(1) == y).float().mean()),
            "tuned": float((tuned(x).argmax(1) == y).float().mean()),
        }
    assert torch.allclose(small_out, masked_out, rtol=1e-4, atol=1e-5)
    accuracy = result["accuracy"]
    assert accuracy["dense"] == pytest.approx(acc["dense"], abs=1e-6) and accuracy["dense"] > 0.3
    assert accuracy["pruned (masked)"] == pytest.approx(acc["masked"], abs=1e-6)
    assert accuracy["pruned and shrunk"] == pytest.approx(acc["masked"], abs=1e-6)
    assert list(accuracy.values())[-1] == pytest.approx(acc["tuned"], abs=1e-6)
    # half the channels of every group gone: params and FLOPs about a quarter (widths multiply)
    n_dense, n_small = result["n_params"]
    assert n_dense == sum(p.numel() for p in model.parameters()) == 11_181_642
    assert n_small == sum(p.numel() for p in small.parameters()) < 0.35 * n_dense
    assert result["flops"][1] < 0.35 * result["flops"][0]
    assert small.conv1.out_channels < model.conv1.out_channels and small.fc.out_features == 10
    # a fresh ResNet-18 rebuilt from the saved kept channels takes the saved weights
    import json

    from funcprune import structural as st

    with open(tmp_path / "kept_channels.json") as f:
        fresh = st.shrink_to(structural.build_model(), json.load(f))
    fresh.load_state_dict(torch.load(tmp_path / "resnet18_shrunk.pt"))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), tuned(x)) and result["reloaded_equal"]
    out = capsys.readouterr().out.splitlines()
    assert f"{'dense':<34}{accuracy['dense']:>9.1%}" in out
    assert any(line.startswith("batch 64") for line in out)


@pytest.mark.slow
def test_llm_example_perplexities_are_the_masked_models_and_wanda_beats_magnitude(capsys):
    """examples/llm.py on SmolLM2-135M (the [llm] extra): every printed perplexity is the model with
    params * masks written into a copy, each method prunes exactly half of every row or layer, and the
    calibrated methods keep the model far better than magnitude pruning."""
    from examples import _smollm2

    if not _smollm2.available():
        if os.environ.get("CI"):
            raise ImportError(f"CI runs every test: the [llm] extra and the model are needed ({_smollm2.INSTALL})")
        pytest.skip(f"needs the [llm] extra: {_smollm2.INSTALL}")
    import copy

    from examples import llm
    from funcprune.oneshot.evaluate import perplexity

    rows = llm.main(calibration=4, calibration_len=64, evaluation=2, eval_len=128)
    out = capsys.readouterr().out.splitlines()
    model, tokenizer = _smollm2.load()
    tokens = _smollm2.text_tokens(tokenizer)[1][: 2 * 128]
    assert [row["method"] for row in rows] == ["dense", "magnitude", "wanda", "sparsegpt"]
    for row, line in zip(rows, out[2:]):
        plain = copy.deepcopy(model)
        if row["masks"]:
            values = {**dict(model.named_parameters()), **row["params"]}
            plain.load_state_dict(
                {n: values[n] * row["masks"][n] if n in row["masks"] else values[n] for n in values}, strict=False
            )
            assert len(row["masks"]) == 30 * 7 and row["pruned"] == 0.5
            for name, mask in row["masks"].items():
                assert int((~mask).sum()) == mask.numel() // 2, name
        assert row["perplexity"] == pytest.approx(perplexity(plain, tokens, seq_len=128), rel=1e-5)
        assert line == f"{row['method']:<12}{row['pruned']:>8.1%}{row['perplexity']:>12.2f}{row['seconds']:>9.1f}"
    ppl = {row["method"]: row["perplexity"] for row in rows}
    assert ppl["dense"] < min(ppl["wanda"], ppl["sparsegpt"]) < ppl["magnitude"]
