"""Quickstart: prune a LeNet functionally and run it through ``funcprune.functional_call``.

The model is the one of PyTorch's pruning tutorial. Nothing here mutates the module: params and
masks are plain dicts, and every pruning step returns new masks.

Run (from a clone of the repository):  python -m examples.quickstart
"""

from __future__ import annotations

import argparse

import torch

import funcprune as fp
from examples._models import LeNet


def main(seed: int = 0) -> dict:
    """Prune the tutorial's LeNet in four steps, print a per-parameter table; return the masks and logits."""
    torch.manual_seed(seed)
    model = LeNet()
    params = {name: p.detach() for name, p in model.named_parameters()}

    # 1. Random 30% of conv1.weight, then L2-structured 50% of its output channels on top.
    masks = fp.prune(params, fp.random_unstructured, 0.3, include=["conv1.weight"])
    masks = fp.prune(params, fp.ln_structured, 0.5, 2, 0, masks=masks, include=["conv1.weight"])
    # 2. The 3 smallest entries of conv1.bias.
    masks = fp.prune(params, fp.l1_unstructured, 3, masks=masks, include=["conv1.bias"])
    # 3. 20% of every other weight, layer by layer.
    others = lambda name, leaf: name.endswith("weight") and not name.startswith("conv1")  # noqa: E731
    masks = fp.prune(params, fp.l1_unstructured, 0.2, masks=masks, include=others)
    # 4. Then 40% of what is left across all weights at once (global magnitude pruning).
    masks = fp.global_unstructured(params, 0.4, masks=masks, include=lambda name, leaf: name.endswith("weight"))

    x = torch.randn(8, 1, 28, 28)
    logits = fp.functional_call(model, params, (x,), masks=masks)  # the model itself is untouched
    reference = torch.func.functional_call(model, fp.apply_masks(params, masks), (x,))
    assert torch.equal(logits, reference)

    report = fp.sparsity(masks, params)
    print(f"{'parameter':<14}{'shape':<18}{'pruned':>8}")
    for name, p in params.items():
        fraction = float(report.per_leaf[name]) if name in report.per_leaf else 0.0
        print(f"{name:<14}{str(tuple(p.shape)):<18}{fraction:>8.1%}")
    print(f"global sparsity: {float(report.fraction):.1%} of {report.total} parameters ({int(report.pruned)} pruned)")
    print(f"logits: {tuple(logits.shape)}")
    return {"masks": masks, "params": params, "logits": logits}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args().seed)
