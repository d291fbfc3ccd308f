"""llm-compressor's Wanda / SparseGPT on SmolLM2-135M, one run per process, for ``benchmarks/oneshot.py``.

Runs in llm-compressor's own environment (it pins another torch and transformers than funcprune's
test environment), from the repository root::

    /path/to/llmc/bin/python -m benchmarks._llmcompressor_peer SPEC.json

``SPEC.json``: ``{"calibration": "calib.pt", "method": "wanda" | "sparsegpt", "amount": 0.5,
"pattern": [2, 4] | null, "owl": false, "batch_size": 4, "block_size": 128, "damp": 0.01,
"threads": 2, "dtype": "float32", "out": "weights.pt"}`` (``dtype`` optional). ``calibration``
holds the ``(samples, seq_len)`` token windows funcprune calibrates on; the pruned weights of the
blocks' linear layers are saved to ``out`` (named like the model's parameters), so that perplexity
is measured by the same code as funcprune's rows, in the parent process. The last line printed is
JSON: the seconds and the peak-RSS growth of the ``oneshot`` call, or the error it raised.

Imports neither funcprune nor anything of the benchmarks but the model loader.
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
import traceback

import torch

from examples import _smollm2

_MIB = 1 << 20


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024


def _reset_peak() -> None:
    """Restart the peak-RSS count at the current RSS (Linux >= 4.0), so loading the model does not hide it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _plain_checkpoint(model, tokenizer, directory: str, dtype: torch.dtype = torch.float32):
    """The model and tokenizer saved as a float32 checkpoint and loaded back: ``oneshot`` refuses a model whose
    config names a quantization (GGUF), and transformers will not save one; the weights are the dequantized
    ones, unchanged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).eval(), AutoTokenizer.from_pretrained(directory)


def _recipe(spec: dict):
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    pattern = spec.get("pattern")
    options = dict(
        sparsity=spec["amount"],
        mask_structure=f"{pattern[0]}:{pattern[1]}" if pattern else "0:0",
        targets=[r"re:model\.layers\.\d+$"],
        ignore=["re:.*lm_head"],
    )
    if spec.get("owl"):
        options.update(sparsity_profile="owl", owl_m=spec.get("owl_threshold", 5), owl_lmbda=spec.get("owl_lam", 0.08))
    if spec["method"] == "sparsegpt":
        return SparseGPTModifier(
            block_size=spec.get("block_size", 128), dampening_frac=spec.get("damp", 0.01), **options
        )
    if spec["method"] == "wanda":
        return WandaPruningModifier(**options)
    raise ValueError(f"method must be 'wanda' or 'sparsegpt', got {spec['method']!r}")


def main(spec: dict) -> dict:
    """Prune SmolLM2-135M with llm-compressor's ``oneshot`` as ``spec`` says; its measurements."""
    from llmcompressor import oneshot
    from torch.utils.data import DataLoader

    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    model, tokenizer = _smollm2.load(dtype)
    checkpoint = tempfile.TemporaryDirectory()
    model, tokenizer = _plain_checkpoint(model, tokenizer, checkpoint.name, dtype)
    windows = torch.load(spec["calibration"])
    rows = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    loader = DataLoader(rows, batch_size=spec.get("batch_size", 1), shuffle=False)
    recipe = _recipe(spec)
    _reset_peak()
    base = _peak_bytes()
    start = time.perf_counter()
    oneshot(
        model=model,
        tokenizer=tokenizer,
        dataset=loader,
        recipe=recipe,
        num_calibration_samples=len(rows),
        max_seq_length=windows.shape[1],
        pipeline="sequential",
        sequential_targets=["LlamaDecoderLayer"],
    )
    seconds = time.perf_counter() - start
    peak = (_peak_bytes() - base) / _MIB
    weights = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if name.startswith("model.layers.") and name.endswith("proj.weight")
    }
    torch.save(weights, spec["out"])
    checkpoint.cleanup()
    import llmcompressor
    import transformers

    return {
        "seconds": seconds,
        "peak_mib": peak,
        "versions": {
            "llmcompressor": llmcompressor.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    try:
        result = main(spec)
    except Exception as exc:  # reported as the row's outcome, not hidden
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print(json.dumps(result))
