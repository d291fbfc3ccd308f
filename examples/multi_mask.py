"""K = 16 sparse subnetworks trained at once, in one vmapped ``torch.func`` step, on real digits.

The 16 subnetworks are 4 initializations (seeds) x 4 sparsities. Their params and masks are
stacked (``funcprune.stack``; the masks come from ``funcprune.masks_for_scores``, one vmap over the
stacked inits, pruning each by magnitude at its own amount), and one training step is
``vmap_stacked(step, (0, 1))`` over both. The script then trains each subnetwork alone, in a
Python loop, checks that both runs end at the same params, and times them step by step: each
training step runs vmapped and as the loop over the subnetworks side by side, and the script
prints the medians over the steps and the median of the per-step ratios (see
``examples/_timing.py``: a single total swings with the machine's load).

The check runs in float64 by default: both runs compute the same math, but a batched matmul sums
in another order than K separate ones, and in float32 those last-bit differences grow over
hundreds of SGD steps (they stay ~1e-7 for the first 50 steps, then reach ~1e-2 in a few
subnetworks where a ReLU flips). In float64 the runs agree to ~1e-15.

Run (from a clone of the repository):  python -m examples.multi_mask [--steps 200] [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch

import funcprune as fp
from examples._digits import batches, init_params, is_weight, load_digits, make_model, make_step
from examples._timing import DEPENDS, Rounds

SEEDS = (0, 1, 2, 3)
SPARSITIES = (0.2, 0.5, 0.7, 0.85)


def main(steps: int = 200, seeds=SEEDS, sparsities=SPARSITIES, dtype: torch.dtype = torch.float64) -> dict:
    """Train ``len(seeds) * len(sparsities)`` subnetworks vmapped and in a loop; return the results.

    Returns a dict with the accuracies, the largest param difference between the two runs, both
    runs' total and median per-step seconds, the median per-step speedup with its quartiles, and
    the stacked trained ``params``, ``masks`` and their ``amounts``. In float64 it asserts that the
    difference is below 1e-9.
    """
    x_train, y_train, x_test, y_test = load_digits(0)
    data = (x_train.to(dtype), y_train, x_test.to(dtype), y_test)
    model = make_model()
    inits = [{n: p.to(dtype) for n, p in init_params(seed).items()} for seed in seeds for _ in sparsities]
    amounts = [amount for _ in seeds for amount in sparsities]
    params = fp.stack(inits)
    masks = fp.masks_for_scores(inits[0], fp.l1_unstructured, params, amounts, include=is_weight)
    step = make_step(model)
    minibatches = list(batches(data[0], data[1], steps))

    vmapped_step = fp.vmap_stacked(step, (0, 1))
    stacked, alone, alone_masks = params, list(inits), fp.unstack(masks)
    rounds = Rounds(["vmapped", "loop"])
    for x, y in minibatches:  # the subnetworks are independent: the loop may run them step by step

        def run_vmapped():
            nonlocal stacked
            stacked, _ = vmapped_step(stacked, masks, x, y)

        def run_loop():
            for k, mask in enumerate(alone_masks):
                alone[k], _ = step(alone[k], mask, x, y)

        rounds.run({"vmapped": run_vmapped, "loop": run_loop})
    speedup, low, high = rounds.ratio("loop", "vmapped")

    diff = max(float((stacked[name][k] - p[name]).abs().max()) for k, p in enumerate(alone) for name in p)
    with torch.no_grad():
        logits = fp.stacked_call(model, stacked, (data[2],), masks=masks, stacked="both")
    accuracy = (logits.argmax(dim=-1) == data[3]).float().mean(dim=1)
    total = fp.sparsity(fp.unstack(masks)[0]).total
    print(f"{'seed':>4}{'sparsity':>10}{'accuracy':>10}")
    for k, seed in enumerate(seed for seed in seeds for _ in sparsities):
        kept = sum(int(m[k].sum()) for m in masks.values())
        print(f"{seed:>4}{1 - kept / total:>10.1%}{float(accuracy[k]):>10.1%}")
    print(f"largest |vmapped - alone| param difference: {diff:.2e}")
    print(
        f"{len(inits)} subnetworks x {steps} steps, one step (median of {steps}, side by side): vmapped "
        f"{rounds.median('vmapped') * 1e3:.1f} ms, loop {rounds.median('loop') * 1e3:.1f} ms; vmapped "
        f"{speedup:.1f}x faster (quartiles {low:.1f}-{high:.1f}x)"
    )
    print(f"({DEPENDS})")
    if dtype == torch.float64:
        assert diff < 1e-9, f"vmapped training differs from training alone by {diff}"
    return {
        "accuracy": accuracy.tolist(),
        "max_diff": diff,
        "vmapped_s": rounds.total("vmapped"),
        "loop_s": rounds.total("loop"),
        "vmapped_step_s": rounds.median("vmapped"),
        "loop_step_s": rounds.median("loop"),
        "speedup": (speedup, low, high),
        "params": stacked,
        "masks": masks,
        "amounts": amounts,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    args = parser.parse_args()
    main(args.steps, dtype=getattr(torch, args.dtype))
