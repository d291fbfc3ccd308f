"""Lottery tickets on real handwritten digits: iterative magnitude pruning with rewinding.

Each round trains three sparse networks at once, in one ``vmap`` of a ``torch.func`` step:

* **ticket**: the IMP masks, weights rewound to their initial values (``funcprune.lottery_round``);
* **random reinit**: the same masks, freshly re-initialized weights;
* **random mask**: a random global mask with exactly as many pruned weights, the original init.

It prints a table and writes ``lottery_ticket.png`` (test accuracy vs sparsity) and
``lottery_ticket.md`` (the table) to ``--out`` (default: a new temporary directory).

Run (from a clone of the repository, with the ``[examples]`` extra installed):
  python -m examples.lottery_ticket [--rounds 8] [--steps 300] [--amount 0.3] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

import funcprune as fp
from examples._digits import batches, init_params, is_weight, load_digits, make_model, make_step

VARIANTS = ("ticket", "random reinit", "random mask")


def train_three(model, params: list, masks: list, data, steps: int, seed: int) -> dict:
    """Train the three (params, masks) pairs together: one vmapped step per minibatch."""
    stacked_params, stacked_masks = fp.stack(params), fp.stack(masks)
    step = fp.vmap_stacked(make_step(model), (0, 1))
    for x, y in batches(data[0], data[1], steps, seed=seed):
        stacked_params, _ = step(stacked_params, stacked_masks, x, y)
    with torch.no_grad():
        logits = fp.stacked_call(model, stacked_params, (data[2],), masks=stacked_masks, stacked="both")
    accuracy = (logits.argmax(dim=-1) == data[3]).float().mean(dim=1)
    return {"params": fp.unstack(stacked_params), "accuracy": accuracy.tolist()}


def main(rounds: int = 8, steps: int = 300, amount: float = 0.3, seed: int = 0, out: str = None) -> list:
    """Run ``rounds`` IMP rounds pruning ``amount`` of the surviving weights each; return the rows.

    Writes ``lottery_ticket.png`` and ``lottery_ticket.md`` into ``out`` (created if missing;
    None: a new temporary directory), and prints where.
    """
    out = out or tempfile.mkdtemp(prefix="funcprune-lottery-")
    os.makedirs(out, exist_ok=True)
    data = load_digits(seed)
    model = make_model()
    init, reinit = init_params(seed), init_params(seed + 1000)
    weights = {n: p for n, p in init.items() if is_weight(n, p)}
    gen = torch.Generator().manual_seed(seed + 2000)  # a stream unrelated to the init's draws
    masks, ticket = None, init
    rows = []
    print(f"{'round':>5}{'sparsity':>10}" + "".join(f"{v:>15}" for v in VARIANTS))
    for r in range(rounds + 1):
        full = masks or {n: torch.ones_like(p, dtype=torch.bool) for n, p in weights.items()}
        pruned = int(fp.sparsity(full).pruned)
        random_mask = fp.global_unstructured(init, pruned, method="random", include=is_weight, generator=gen)
        result = train_three(
            model,
            [ticket, fp.apply_masks(reinit, full), fp.apply_masks(init, random_mask)],
            [full, full, random_mask],
            data,
            steps,
            seed + r,
        )
        row = {
            "round": r,
            "pruned": pruned,
            "sparsity": pruned / sum(w.numel() for w in weights.values()),
            **dict(zip(VARIANTS, result["accuracy"])),
        }
        rows.append(row)
        print(f"{r:>5}{row['sparsity']:>10.1%}" + "".join(f"{row[v]:>15.1%}" for v in VARIANTS))
        if r < rounds:  # prune the trained ticket, rewind to the init
            masks, ticket = fp.lottery_round(result["params"][0], masks, init, amount, include=is_weight)
    write_table(rows, os.path.join(out, "lottery_ticket.md"))
    plot(rows, os.path.join(out, "lottery_ticket.png"), len(data[3]))
    print(f"wrote lottery_ticket.md and lottery_ticket.png to {out}")
    return rows


def write_table(rows: list, path: str) -> None:
    """The rows as a Markdown table."""
    lines = ["| round | sparsity | " + " | ".join(VARIANTS) + " |", "|---:" * (2 + len(VARIANTS)) + "|"]
    lines += [
        f"| {row['round']} | {row['sparsity']:.1%} | " + " | ".join(f"{row[v]:.1%}" for v in VARIANTS) + " |"
        for row in rows
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(rows: list, path: str, n_test: int) -> None:
    """Test accuracy vs sparsity, one line per variant, as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    density = [100 * (1 - row["sparsity"]) for row in rows]
    for variant, marker in zip(VARIANTS, "osv"):
        ax.plot(density, [100 * row[variant] for row in rows], marker=marker, label=variant)
    ax.set_xscale("log")
    # A log axis over 100%..~6% has only two decades' labels (100, 10): label every measured density.
    ax.xaxis.set_major_locator(FixedLocator(density))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (% of the dense network, log scale)")
    ax.set_ylabel(f"test accuracy (% of {n_test} images)")
    ax.set_title("Lottery tickets: MLP on scikit-learn digits")
    ax.grid(alpha=0.3)
    ax.legend(title="variant")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--amount", type=float, default=0.3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    main(args.rounds, args.steps, args.amount, out=args.out)
