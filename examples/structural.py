"""Structural pruning: prune whole channels of a torchvision ResNet-18 and shrink it to a smaller dense model.

A ResNet-18 (``weights=None``, 10 classes) is trained a few epochs on scikit-learn's digits,
upscaled to 32x32 and repeated over 3 channels (nothing is downloaded). Then:

1. ``funcprune.structural.groups`` finds the coupled channel groups (one ``torch.export`` trace);
2. ``prune_groups`` removes 50% of all channels (one global ranking of group L2 importance);
3. ``shrink`` builds the smaller dense ResNet-18 (its outputs equal the masked model's);
4. the shrunk model is fine-tuned briefly, and its kept channels and weights are saved to
   ``--out`` and loaded into a freshly built ResNet-18 with ``shrink_to`` (what another process does).

It prints the accuracy at each step, parameters and FLOPs, and a latency table (dense vs shrunk).

Run (from a clone of the repository):  python -m examples.structural [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

import funcprune as fp
from examples import _digits
from examples._timing import DEPENDS, Rounds
from funcprune import structural as st


def digit_images(size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: the 8x8 digits upscaled to ``size`` x ``size``, 3 channels."""
    x_train, y_train, x_test, y_test = _digits.load_digits(seed)

    def images(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.view(-1, 1, 8, 8), size=(size, size), mode="bilinear", align_corners=False)
        return ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()

    return images(x_train), y_train, images(x_test), y_test


def build_model() -> nn.Module:
    """torchvision's ResNet-18 for 10 classes, untrained (``weights=None``)."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int = 0) -> nn.Module:
    """``steps`` of Adam on minibatches of 64 (order fixed by ``seed``); returns the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for xb, yb in _digits.batches(x, y, steps, batch_size=64, seed=seed):
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params=None, masks=None) -> float:
    """Test accuracy of ``model`` in eval mode (through ``funcprune.functional_call`` when ``masks`` are given)."""
    model.eval()
    with torch.no_grad():
        out = model(x) if masks is None else fp.functional_call(model, params, (x,), masks=masks)
    return float((out.argmax(dim=-1) == y).float().mean())


def flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward on ``x`` (``torch.utils.flop_counter``: convs and matmuls, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(x)
    return counter.get_total_flops()


def latency(models: dict[str, nn.Module], x: torch.Tensor, rounds: int) -> Rounds:
    """ms per forward of each model on ``x``: one warm-up each, then ``rounds`` rounds in alternating order."""
    timed = Rounds(models)
    with torch.no_grad():
        for model in models.values():
            model(x)  # warm-up
        for _ in range(rounds):
            timed.run({name: (lambda m=model: m(x)) for name, model in models.items()})
    return timed


def main(out: str = None, quick: bool = False, amount: float = 0.5, seed: int = 0, verbose: bool = True) -> dict:
    """Train, prune, shrink, fine-tune and reload a ResNet-18; print the tables; return what was measured."""
    say = print if verbose else (lambda *a, **k: None)
    out = out or tempfile.mkdtemp(prefix="funcprune_structural_")
    os.makedirs(out, exist_ok=True)
    size, epochs, tune_epochs, rounds = (16, 1, 0.25, 3) if quick else (32, 3, 1, 10)
    x_train, y_train, x_test, y_test = digit_images(size, seed)
    per_epoch = len(y_train) // 64

    torch.manual_seed(seed)
    model = train(build_model(), x_train, y_train, round(epochs * per_epoch), lr=1e-3, seed=seed)
    acc_dense = accuracy(model, x_test, y_test)

    example = (x_test[:8],)
    groups = st.groups(model, example)  # coupled channels, one torch.export trace
    params = {name: p.detach() for name, p in model.named_parameters()}
    masks = st.prune_groups(params, groups, amount, scope="global")  # whole channels, group L2
    acc_masked = accuracy(model, x_test, y_test, params, masks)
    small = st.shrink(model, masks, example, groups=groups)  # checks its outputs against the masked model
    acc_shrunk = accuracy(small, x_test, y_test)
    with torch.no_grad():
        diff = float((small(x_test) - fp.functional_call(model, params, (x_test,), masks=masks)).abs().max())
    tuned = train(copy.deepcopy(small), x_train, y_train, round(tune_epochs * per_epoch), lr=5e-4, seed=seed + 1)
    acc_tuned = accuracy(tuned, x_test, y_test)

    # Carry the shrink to a fresh process: the kept channels (JSON) and the shrunk weights.
    kept = st.kept_channels(masks, groups)
    kept_path, weights_path = os.path.join(out, "kept_channels.json"), os.path.join(out, "resnet18_shrunk.pt")
    with open(kept_path, "w") as f:
        json.dump(kept, f)
    torch.save(tuned.state_dict(), weights_path)
    with open(kept_path) as f:
        fresh = st.shrink_to(build_model(), json.load(f))  # the architecture of the shrunk model
    fresh.load_state_dict(torch.load(weights_path))
    with torch.no_grad():
        reloaded_equal = torch.equal(fresh.eval()(x_test), tuned(x_test))

    n_dense, n_small = (sum(p.numel() for p in m.parameters()) for m in (model, small))
    f_dense, f_small = flops(model, x_test[:1]), flops(small, x_test[:1])
    kept_channels = sum(len(k["kept"]) for k in kept) / sum(k["channels"] for k in kept)
    say(
        f"ResNet-18 trained {epochs:g} epoch(s) on digits ({size}x{size}, 3 channels), {len(groups)} channel groups, "
        f"{amount:.0%} of channels removed (global, group L2): {kept_channels:.1%} kept"
    )
    say(f"{'':<34}{'accuracy':>9}")
    rows = [
        ("dense", acc_dense),
        ("pruned (masked)", acc_masked),
        ("pruned and shrunk", acc_shrunk),
        (f"shrunk, fine-tuned {tune_epochs:g} epoch(s)", acc_tuned),
    ]
    for label, acc in rows:
        say(f"{label:<34}{acc:>9.1%}")
    say(
        f"max |shrunk - masked| on the test set: {diff:.1e}; reloaded with shrink_to: "
        f"{'identical outputs' if reloaded_equal else 'DIFFERENT outputs'}"
    )
    say(f"\n{'':<10}{'params':>12}{'MFLOPs':>10}")
    say(f"{'dense':<10}{n_dense:>12,}{f_dense / 1e6:>10.1f}")
    say(
        f"{'shrunk':<10}{n_small:>12,}{f_small / 1e6:>10.1f}   ({n_small / n_dense:.2f}x params, "
        f"{f_small / f_dense:.2f}x FLOPs)"
    )
    lat = {}
    say(
        f"\nlatency, ms per forward (medians of {rounds} side-by-side rounds; speedup: the median of the "
        f"per-round ratios, with quartiles)"
    )
    say(f"{'':<14}{'dense':>9}{'shrunk':>9}{'speedup':>9}  quartiles")
    for batch in (1, 64):
        timed = latency({"dense": model, "shrunk": tuned}, x_test[:batch], rounds)
        ms = {name: timed.median(name) * 1e3 for name in ("dense", "shrunk")}
        speedup, low, high = timed.ratio("dense", "shrunk")
        lat[batch] = dict(ms, speedup=speedup)
        say(
            f"{'batch ' + str(batch):<14}{ms['dense']:>9.2f}{ms['shrunk']:>9.2f}{speedup:>8.2f}x  {low:.2f}-{high:.2f}x"
        )
    say(f"({DEPENDS})")
    say(f"\nwrote {kept_path} and {weights_path}")
    return {
        "accuracy": dict(rows),
        "groups": groups,
        "masks": masks,
        "params": params,
        "model": model,
        "small": small,
        "tuned": tuned,
        "max_diff": diff,
        "reloaded_equal": reloaded_equal,
        "kept_path": kept_path,
        "weights_path": weights_path,
        "n_params": (n_dense, n_small),
        "flops": (f_dense, f_small),
        "latency_ms": lat,
        "test": (x_test, y_test),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=None, help="directory for the kept channels and weights (default: a new temporary directory)"
    )
    parser.add_argument("--quick", action="store_true", help="16x16 images, 1 epoch and a quarter epoch of fine-tuning")
    parser.add_argument("--amount", type=float, default=0.5, help="fraction of all channels removed")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    main(options.out, options.quick, options.amount, options.seed)
