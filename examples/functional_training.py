"""Prune during a ``torch.func`` training loop on real handwritten digits (scikit-learn's digits).

Params and masks are plain dicts; every step is ``torch.func.grad`` through
``funcprune.functional_call`` followed by a functional SGD update and ``funcprune.masked_update``.
The model (an nn.Module) is never mutated.

1. Train the dense MLP.
2. One-shot: prune 90% of the weights at once (global magnitude), fine-tune.
3. Iterative: reach the same sparsity in rounds (the same fraction of the survivors each round),
   fine-tuning after each; both prune runs fine-tune for ``steps // 2`` steps in all.

Run (from a clone of the repository):  python -m examples.functional_training [--steps 400] [--rounds 6]
"""

from __future__ import annotations

import argparse

import funcprune as fp
from examples._digits import accuracy, init_params, is_weight, load_digits, make_model, train


def report(label: str, model, params, masks, data) -> dict:
    """Print and return one row: test accuracy and the sparsity of the weights (with the params and masks)."""
    acc = accuracy(model, params, masks, data[2], data[3])
    weights = {n: p for n, p in params.items() if is_weight(n, p)}
    total = sum(w.numel() for w in weights.values())
    pruned = int(fp.sparsity(masks, weights).pruned) if masks else 0
    print(f"{label:<24}{pruned / total:>10.1%}{acc:>11.1%}")
    return {
        "label": label,
        "sparsity": pruned / total,
        "pruned": pruned,
        "weights": total,
        "accuracy": acc,
        "params": params,
        "masks": masks,
    }


def main(steps: int = 400, rounds: int = 6, target: float = 0.9, seed: int = 0) -> list:
    """Dense training, then one-shot and iterative pruning to ``target`` sparsity; returns the rows.

    Each row: ``label``, ``sparsity`` (``pruned / weights``), ``accuracy`` (test), and the row's
    ``params`` and ``masks``.

    Args:
      steps: SGD steps of dense training; fine-tuning uses ``steps // 2`` (one-shot) and
        ``steps // (2 * rounds)`` per round (iterative), so both prune runs train equally long.
      rounds: number of iterative pruning rounds.
      target: final fraction of pruned weights.
      seed: init and minibatch seed.
    """
    data = load_digits(seed)
    model = make_model()
    print(f"{'':<24}{'sparsity':>10}{'accuracy':>11}")
    dense = train(model, init_params(seed), None, data, steps, seed=seed)
    rows = [report("dense", model, dense, None, data)]

    masks = fp.global_unstructured(dense, target, include=is_weight)
    rows.append(report("one-shot, pruned", model, dense, masks, data))
    tuned = train(model, fp.apply_masks(dense, masks), masks, data, steps // 2, seed=seed + 1)
    rows.append(report("one-shot, fine-tuned", model, tuned, masks, data))

    per_round = 1 - (1 - target) ** (1 / rounds)  # the fraction of survivors pruned per round
    params, masks = dense, None
    for r in range(1, rounds + 1):
        masks = fp.global_unstructured(params, per_round, masks=masks, include=is_weight)
        params = train(model, params, masks, data, max(steps // (2 * rounds), 1), seed=seed + 1 + r)
        rows.append(report(f"iterative, round {r}", model, params, masks, data))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args()
    main(args.steps, args.rounds, args.target)
