"""K masks at once: one vmapped call vs a loop of functional_calls vs a torch.nn.utils.prune loop.

Models: LeNet-5 (batch 64 of 1x32x32; conv 1->6 k5, conv 6->16 k5, fc 400->120->84->10)
and a 4x1024 MLP (batch 256), K = 32 random 50% masks over all weights.

Contenders, interleaved in alternating order, median of repeats after warm-up (``_timing``):

* ``loop``: ``[funcprune.functional_call(model, params, (x,), masks=masks_k) for k in range(K)]``;
* ``torch loop``: what a torch.nn.utils.prune user writes: copy each mask into every
  ``weight_mask`` buffer, call the module;
* ``vmap``: ``funcprune.stacked_call`` (one vmap), with torch's batching rules;
* ``vmap chunk=C``: the same, ``chunk_size=C`` (C subnetworks at a time);
* ``vmap+conv ...``: with the conv batching rule of ``funcprune._batched_conv`` (LeNet only).

Run (from the repository root):  python -m benchmarks.multi_mask [--k 32] [--rounds 7] [--grad] [--passive-omp]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections.abc import Callable

if "--passive-omp" in sys.argv:  # must precede loading OpenMP (with torch)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import optree  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.utils.prune as torch_prune  # noqa: E402

import funcprune as fp  # noqa: E402
from examples._models import LeNet  # noqa: E402

from ._models import MLP  # noqa: E402
from ._timing import interleaved  # noqa: E402


def _case(name: str, k: int):
    torch.manual_seed(0)
    model, x = (
        (LeNet(kernel_size=5), torch.randn(64, 1, 32, 32)) if name == "lenet" else (MLP(), torch.randn(256, 1024))
    )
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    weights = [n for n in params if n.endswith("weight")]
    masks = fp.masks_for_seeds(params, fp.random_unstructured, k, 0.5, include=weights)
    return model, params, masks, x


def _torch_loop(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> Callable:
    pruned = copy.deepcopy(model)
    pruned.eval()
    modules = dict(pruned.named_modules())
    targets = []
    for name in masks:
        module = modules[name.rsplit(".", 1)[0]]
        torch_prune.identity(module, "weight")
        targets.append((module.weight_mask, masks[name]))
    k = next(iter(masks.values())).shape[0]

    def run():
        outs = []
        for i in range(k):
            for buffer, stacked in targets:
                buffer.copy_(stacked[i])
            outs.append(pruned(x))
        return outs

    return run


def contenders(name: str, k: int, grad: bool = False) -> dict[str, Callable]:
    """``{label: prepare}`` for one model; ``grad`` times ``grad_and_value`` of a loss instead."""
    model, params, masks, x = _case(name, k)
    each = fp.unstack(masks)

    def loss(p, m):
        return fp.functional_call(model, p, (x,), masks=m).logsumexp(dim=-1).mean()

    if grad:
        one = torch.func.grad_and_value(loss)
        stacked = lambda **kw: lambda: fp.vmap_stacked(one, 1, **kw)(params, masks)  # noqa: E731
        loop = lambda: [one(params, m) for m in each]  # noqa: E731
        out = {"loop": lambda: loop}
    else:
        stacked = lambda **kw: lambda: fp.stacked_call(model, params, (x,), masks=masks, **kw)  # noqa: E731
        loop = lambda: [fp.functional_call(model, params, (x,), masks=m) for m in each]  # noqa: E731
        out = {"loop": lambda: loop, "torch loop": lambda: _torch_loop(model, masks, x)}
    for chunk in (None, 8) if grad else (None, 8, 4):
        label = "vmap" if chunk is None else f"vmap chunk={chunk}"
        out[label] = lambda chunk=chunk: stacked(chunk_size=chunk, conv="torch")
        if name == "lenet":
            out["vmap+conv" + label[4:]] = lambda chunk=chunk: stacked(chunk_size=chunk, conv="auto")
    return out


def _check(contenders: dict[str, Callable]) -> None:
    """Every contender must compute what the loop computes before it is timed."""

    def flat(result):
        return torch.cat([t.reshape(-1) for t in optree.tree_leaves(result)])

    def per_item(result):  # a loop gives K results, a vmapped call one result stacked along dim 0
        if isinstance(result, list):
            return [flat(r) for r in result]
        leaves = optree.tree_leaves(result)
        return [torch.cat([t[i].reshape(-1) for t in leaves]) for i in range(leaves[0].shape[0])]

    reference = per_item(contenders["loop"]()())
    for label, prepare in contenders.items():
        for got, ref in zip(per_item(prepare()()), reference):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5, msg=lambda m: f"{label}: {m}")


def main(k: int = 32, rounds: int = 7, grad: bool = False) -> dict[str, dict[str, float]]:
    """Print one table per model: median ms per call and the ratio to the loop and the torch loop."""
    results = {}
    for name in ("lenet", "mlp"):
        with torch.no_grad() if not grad else torch.enable_grad():
            timed = contenders(name, k, grad)
            _check(timed)
            times = interleaved(timed, rounds=rounds, warmup=2).medians
        results[name] = times
        print(
            f"\n{name}, K={k}, {'grad_and_value' if grad else 'forward'}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads"
        )
        print(f"{'contender':<22}{'median ms':>10}{'/ loop':>9}{'/ torch loop':>14}")
        for label, seconds in times.items():
            vs_torch = f"{seconds / times['torch loop']:>14.2f}" if "torch loop" in times else f"{'-':>14}"
            print(f"{label:<22}{seconds * 1e3:>10.1f}{seconds / times['loop']:>9.2f}{vs_torch}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--grad", action="store_true", help="time grad_and_value of a loss instead")
    parser.add_argument(
        "--passive-omp", action="store_true", help="OMP_WAIT_POLICY=PASSIVE, for a machine busy with other work"
    )
    args = parser.parse_args()
    main(args.k, args.rounds, args.grad)
