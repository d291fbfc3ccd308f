"""Gradual magnitude pruning during training, with an ERK distribution, then export.

An MLP learns scikit-learn's digits (8x8 images, bundled with scikit-learn: no download). From
``begin`` to ``end`` the global target sparsity follows the polynomial schedule of Zhu & Gupta
(2017); at each update the target is spread over the layers with Erdős–Rényi-Kernel
(:func:`funcprune.distributions.erk`) and every layer prunes its smallest-magnitude weights until it reaches its
own target (:func:`funcprune.distributions.prune_by` with ``target=True``). Training is a pure loop over
``(params, masks)``: ``torch.func.grad`` through :func:`funcprune.functional_call`, gradients of
pruned weights zeroed. At the end the pruned params are finalized, converted to CSR, checked
against the masked dense model, the masks saved to a bit-packed checkpoint (``masks.pt`` in
``--out``, default a new temporary directory) and loaded back, and sizes printed.

Run (from a clone of the repository, with the ``[examples]`` extra installed):
  python -m examples.gradual_pruning [--steps 600] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

import funcprune as fp
from funcprune.schedules import is_update_step, polynomial


def digits(seed: int):
    """Train/test tensors of the digits data set (standardised pixels), split 80/20."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def accuracy(model, params, masks, x, y) -> float:
    return float((fp.functional_call(model, params, (x,), masks=masks).argmax(1) == y).float().mean())


def main(steps: int = 600, final_sparsity: float = 0.9, seed: int = 0, verbose: bool = True, out: str = None) -> dict:
    """Train and prune for ``steps`` steps; return the numbers the script prints.

    The mask checkpoint goes to ``out/masks.pt`` (``out`` created if missing; None: a new temporary directory).
    """
    out = out or tempfile.mkdtemp(prefix="funcprune-gradual-")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    (x_train, y_train), (x_test, y_test) = digits(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}
    begin, end, every = steps // 5, 4 * steps // 5, max(steps // 20, 1)
    schedule = polynomial(final_sparsity, begin, end, every)
    masks = None

    def loss_fn(p, batch):
        return F.cross_entropy(fp.functional_call(model, p, (batch[0],), masks=masks), batch[1])

    for step in range(steps + 1):
        if is_update_step(step, begin, end, every):
            targets = fp.distributions.erk(params, float(schedule(step)))
            counts = fp.distributions.to_counts(params, targets)
            masks = fp.distributions.prune_by(params, fp.l1_unstructured, counts, masks=masks, target=True)
            if verbose:
                print(
                    f"step {step:4d}: target {float(schedule(step)):.3f}, weights pruned "
                    f"{_weight_sparsity(params, masks):.3f}"
                )
        if step == steps:
            break
        idx = torch.randint(0, len(x_train), (64,))
        grads = fp.mask_grads(torch.func.grad(loss_fn)(params, (x_train[idx], y_train[idx])), masks)
        for name in params:  # SGD with momentum, as a pure update of the params dict
            velocity[name] = 0.9 * velocity[name] + grads[name]
            params[name] = params[name] - 0.05 * velocity[name]

    final = fp.export.finalize(params, masks)
    exported = fp.export.to_sparse(params, masks, "csr")
    check = fp.export.verify(params, masks, exported.params, model, (x_test,))
    path = os.path.join(out, "masks.pt")
    fp.export.save_masks(masks, path)
    restored = fp.export.load_masks(path, like=params)
    result = {
        "test_accuracy": accuracy(model, params, masks, x_test, y_test),
        "weight_sparsity": _weight_sparsity(params, masks),
        "pruned": sum(int((~m).sum()) for m in masks.values()),
        "weights": sum(params[name].numel() for name in masks),
        "per_layer": {name: float((~m).float().mean()) for name, m in masks.items()},
        "dense_bytes": final.report.dense_bytes,
        "sparse_bytes": final.report.sparse_bytes,
        "csr_matches": check.ok,
        "max_abs_diff": check.max_abs_diff,
        "mask_checkpoint_bytes": os.path.getsize(path),
        "mask_checkpoint": path,
        "masks_round_trip": all(torch.equal(restored[n], m) for n, m in masks.items()),
    }
    if verbose:
        print(f"test accuracy {result['test_accuracy']:.3f} at weight sparsity {result['weight_sparsity']:.3f}")
        for name, fraction in result["per_layer"].items():
            print(f"  {name:<10} {str(tuple(params[name].shape)):<11} pruned {fraction:.3f}")
        print(
            f"size: dense {result['dense_bytes']} B -> sparse {result['sparse_bytes']} B "
            f"({result['sparse_bytes'] / result['dense_bytes']:.1%}); mask checkpoint "
            f"{result['mask_checkpoint_bytes']} B"
        )
        print(f"CSR model matches the masked dense model: {check.ok} (max |diff| {check.max_abs_diff:.2e})")
        print(f"wrote {path}")
    return result


def _weight_sparsity(params, masks) -> float:
    pruned = sum(int((~m).sum()) for m in masks.values())
    return pruned / sum(params[name].numel() for name in masks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sparsity", type=float, default=0.9, help="final fraction of pruned weights")
    parser.add_argument("--out", default=None, help="directory for masks.pt (default: a new temporary directory)")
    args = parser.parse_args()
    main(args.steps, args.sparsity, out=args.out)
