"""Structural pruning, funcprune vs Torch-Pruning: ``python -m benchmarks.structural [--quick] [--out PATH]``.

For ResNet-18, ResNet-50, MobileNetV2 (torchvision, ``weights=None``, eval, BatchNorm statistics
and affine params randomized as after training) and a small BERT
(transformers, random init) at 30% and 50% of channels removed (``scope="global"``, group L2
importance) this measures, side by side with Torch-Pruning (``MetaPruner`` with
``GroupMagnitudeImportance(p=2)``, ``global_pruning=True``, the classifier ignored):

- parameters and FLOPs of the dense, the shrunk and Torch-Pruning's model (FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode``: convolutions, matmuls and attention, 2 per
  multiply-add; elementwise ops such as BatchNorm, activations and residual adds are not counted);
- the largest difference between the shrunk model's outputs and the masked model's
  (``funcprune.functional_call`` with the masks);
- inference latency (``torch.no_grad``) of the dense, masked, shrunk and Torch-Pruning models at
  batch 1 and 32, timed in interleaved rounds (the order alternates every round) and reported as
  medians; speedups are medians of the per-round ratios dense / contender, with their quartiles;
- the latency speedup against the speedup the FLOPs predict (dense FLOPs / shrunk FLOPs);
- time to find the groups (``funcprune.structural.groups``, one fake-tensor ATen trace), to choose
  the channels (``prune_groups``) and to shrink (``shrink``, whose default output check is
  included), against Torch-Pruning's pruner construction (its dependency-graph trace) and
  ``step()`` (importance, selection and in-place surgery): medians of repeats.

``torch.set_num_threads`` is fixed (``--threads``, default 1) and printed with the machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn as nn

import funcprune as fp
from funcprune import structural as st

from ._timing import interleaved

HERE = os.path.dirname(os.path.abspath(__file__))
AMOUNTS = (0.3, 0.5)


class Spec(NamedTuple):
    """A benchmarked model: how to build it, its inputs, and what Torch-Pruning needs to prune it alike."""

    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int, bool], tuple[tuple, dict]]  # (batch, quick) -> (args, kwargs)
    tp_options: Callable[[nn.Module, float], dict]  # extra MetaPruner kwargs (ignored layers, heads)
    tp_after: Callable[[nn.Module, Any], None] = lambda model, pruner: None  # attribute fixes after step()


def _image(batch: int, quick: bool) -> tuple[tuple, dict]:
    size = 64 if quick else 224
    return (torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)),), {}


def _trained_like_bn(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine params drawn away from their init (as after training), so that a
    removed channel's BatchNorm shift would show in the output comparison; fixed seed."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
    return model


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        torch.manual_seed(0)
        return _trained_like_bn(getattr(torchvision.models, name)(weights=None)).eval()

    return build


def _classifier_ignored(model: nn.Module, amount: float) -> dict:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]  # fc / classifier[-1]
    return {"ignored_layers": [last]}


BERT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024, vocab_size=30522)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(**BERT)).eval()


def _bert_base() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=BERT["vocab_size"])).eval()  # 12 layers, hidden 768, 12 heads


def _tokens(batch: int, quick: bool) -> tuple[tuple, dict]:
    seq = 32 if quick else 128
    return (torch.randint(0, BERT["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(batch)),), {}


def _bert_tp(model: nn.Module, amount: float) -> dict:
    """Torch-Pruning on BERT alike: whole heads (``prune_num_heads``) and the MLP's inner width; the
    residual width (under LayerNorm, inexact: funcprune leaves it) and the pooler are ignored."""
    from transformers.models.bert.modeling_bert import BertSelfAttention

    ignored, heads = [model.pooler], {}
    for layer in model.encoder.layer:
        ignored += [layer.attention.output.dense, layer.output.dense]
    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            heads.update({m.query: m.num_attention_heads, m.key: m.num_attention_heads, m.value: m.num_attention_heads})
    return {
        "ignored_layers": ignored,
        "num_heads": heads,
        "prune_num_heads": True,
        "prune_head_dims": False,
        "head_pruning_ratio": amount,
        "output_transform": lambda out: out.last_hidden_state.sum(),
    }


def _bert_tp_after(model: nn.Module, pruner) -> None:
    from transformers.models.bert.modeling_bert import BertSelfAttention

    for m in model.modules():
        if isinstance(m, BertSelfAttention):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features
            m.attention_head_size = m.all_head_size // m.num_attention_heads


SPECS = {
    "resnet18": Spec("resnet18", _torchvision("resnet18"), _image, _classifier_ignored),
    "resnet50": Spec("resnet50", _torchvision("resnet50"), _image, _classifier_ignored),
    "mobilenet_v2": Spec("mobilenet_v2", _torchvision("mobilenet_v2"), _image, _classifier_ignored),
    "bert-small": Spec("bert-small", _bert, _tokens, _bert_tp, _bert_tp_after),
    "bert-base": Spec("bert-base", _bert_base, _tokens, _bert_tp, _bert_tp_after),
}


# ----------------------------------------------------------------------------------------------
# Measurements


def params_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops(model: nn.Module, args: tuple, kwargs: dict) -> int:
    """FLOPs of one forward (FlopCounterMode: conv, matmul, attention; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*args, **kwargs)
    return counter.get_total_flops()


def _leaves(out) -> list[torch.Tensor]:
    if isinstance(out, dict):  # transformers' ModelOutput
        out = list(out.values())
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_abs_diff(a, b) -> float:
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def kept_fraction(masks: dict[str, torch.Tensor], groups) -> float:
    """Fraction of the groups' channels the masks keep."""
    kept = st.kept_channels(masks, groups)
    return sum(len(k["kept"]) for k in kept) / sum(k["channels"] for k in kept)


def tp_prune(spec: Spec, model: nn.Module, example: tuple[tuple, dict], amount: float, round_to: int = 1):
    """Torch-Pruning's global group-L2 pruning of a copy of ``model``: (pruned model, construct s, step s)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    args, kwargs = example
    inputs = dict(kwargs, input_ids=args[0]) if kwargs else args[0]
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(
        model,
        inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        global_pruning=True,
        pruning_ratio=amount,
        round_to=round_to if round_to > 1 else None,
        **spec.tp_options(model, amount),
    )
    built = time.perf_counter()
    pruner.step()
    spec.tp_after(model, pruner)
    done = time.perf_counter()
    return model.eval(), built - start, done - built


def measure(
    spec: Spec,
    *,
    quick: bool,
    amounts=AMOUNTS,
    batches=(1, 32),
    rounds: int = 5,
    repeats: int = 3,
    budget: float = 120.0,
    round_to: int = 1,
    log=print,
) -> dict[str, Any]:
    """Everything one model's rows need (see the module docstring)."""
    model = spec.build()
    example = spec.inputs(1, quick)
    args, kwargs = example
    t_groups, groups = _median_time(lambda: st.groups(model, args, kwargs), repeats)
    params = {n: p.detach() for n, p in model.named_parameters()}
    dense_flops = flops(model, args, kwargs)
    result = {
        "model": spec.name,
        "groups": len(groups),
        "groups_s": t_groups,
        "params": params_count(model),
        "flops": dense_flops,
        "amounts": {},
        "latency": {},
    }
    log(
        f"{spec.name}: {len(groups)} groups in {t_groups:.2f} s, {result['params'] / 1e6:.2f}M params, "
        f"{dense_flops / 1e9:.3f} GFLOPs at batch 1"
    )
    check_args, check_kwargs = spec.inputs(2, quick)
    shrunk_models, masks_by, tp_models = {}, {}, {}
    for amount in amounts:
        t_prune, masks = _median_time(
            lambda: st.prune_groups(params, groups, amount, scope="global", round_to=round_to), repeats
        )
        t_shrink, small = _median_time(lambda: st.shrink(model, masks, args, groups=groups, kwargs=kwargs), repeats)
        tp_runs = [tp_prune(spec, model, example, amount, round_to) for _ in range(repeats)]
        tp_model = tp_runs[-1][0]
        with torch.no_grad():
            masked_out = fp.functional_call(model, params, check_args, check_kwargs, masks=masks)
            diff = max_abs_diff(masked_out, small(*check_args, **check_kwargs))
            scale = max(float(t.abs().max()) for t in _leaves(masked_out))
        row = {
            "kept": kept_fraction(masks, groups),
            "prune_s": t_prune,
            "shrink_s": t_shrink,
            "params": params_count(small),
            "flops": flops(small, args, kwargs),
            "max_diff": diff,
            "out_scale": scale,
            "tp_build_s": statistics.median(r[1] for r in tp_runs),
            "tp_step_s": statistics.median(r[2] for r in tp_runs),
            "tp_params": params_count(tp_model),
            "tp_flops": flops(tp_model, args, kwargs),
        }
        result["amounts"][amount] = row
        log(
            f"  {amount:.0%}: kept {row['kept']:.1%} of channels; prune_groups {t_prune:.3f} s, "
            f"shrink {t_shrink:.2f} s "
            f"(TP pruner {row['tp_build_s']:.2f} s, step {row['tp_step_s']:.2f} s); params {row['params'] / 1e6:.2f}M "
            f"(TP {row['tp_params'] / 1e6:.2f}M), GFLOPs {row['flops'] / 1e9:.3f} (TP {row['tp_flops'] / 1e9:.3f}); "
            f"max |shrunk - masked| {diff:.2e} (outputs up to {scale:.2g})"
        )
        shrunk_models[amount], masks_by[amount], tp_models[amount] = small, masks, tp_model
    for batch in batches:
        bargs, bkwargs = spec.inputs(batch, quick)

        def call(fn):
            def prepare():
                return fn

            return prepare

        contenders = {"dense": call(lambda: model(*bargs, **bkwargs))}
        for amount in amounts:
            masks = masks_by[amount]
            contenders[f"masked {amount:.0%}"] = call(
                lambda masks=masks: fp.functional_call(model, params, bargs, bkwargs, masks=masks)
            )
            contenders[f"shrunk {amount:.0%}"] = call(lambda m=shrunk_models[amount]: m(*bargs, **bkwargs))
            contenders[f"TP {amount:.0%}"] = call(lambda m=tp_models[amount]: m(*bargs, **bkwargs))
        with torch.no_grad():
            timing = interleaved(contenders, rounds=rounds, min_sample=0.05, budget=budget)
        lat = {"ms": {k: v * 1e3 for k, v in timing.medians.items()}, "speedup": {}}
        for label in contenders:
            if label != "dense":
                ratio, low, high = timing.paired_ratio("dense", label)
                lat["speedup"][label] = (ratio, low, high)
        lat["rounds"] = len(timing.samples["dense"])
        result["latency"][batch] = lat
        log(f"  batch {batch}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in lat["ms"].items()))
    return result


# ----------------------------------------------------------------------------------------------
# Report


def _m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _g(n: int) -> str:
    return f"{n / 1e9:.3f}"


def size_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | removed | channels kept | params: dense | shrunk | TP | GFLOPs (batch 1): dense | shrunk | TP "
        "| max abs diff shrunk vs masked (largest output) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for amount, a in r["amounts"].items():
            lines.append(
                f"| {r['model']} | {amount:.0%} | {a['kept']:.1%} | {_m(r['params'])} | {_m(a['params'])} "
                f"({a['params'] / r['params']:.2f}) | {_m(a['tp_params'])} "
                f"({a['tp_params'] / r['params']:.2f}) "
                f"| {_g(r['flops'])} | {_g(a['flops'])} ({a['flops'] / r['flops']:.2f}) | {_g(a['tp_flops'])} "
                f"({a['tp_flops'] / r['flops']:.2f}) | {a['max_diff']:.1e} ({a['out_scale']:.2g}) |"
            )
    return lines


def _verdict(speedup: float, predicted: float) -> str:
    return "ok" if speedup >= 0.9 * predicted else "MISS"


def latency_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | batch | removed | dense ms | masked ms | shrunk ms | TP ms | speedup shrunk (quartiles) "
        "| FLOPs predict | measured / predicted | within 10% | speedup TP (FLOPs predict) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for batch, lat in r["latency"].items():
            ms = lat["ms"]
            for amount, a in r["amounts"].items():
                s, lo, hi = lat["speedup"][f"shrunk {amount:.0%}"]
                tp = lat["speedup"][f"TP {amount:.0%}"][0]
                predicted, tp_predicted = r["flops"] / a["flops"], r["flops"] / a["tp_flops"]
                lines.append(
                    f"| {r['model']} | {batch} | {amount:.0%} | {ms['dense']:.2f} "
                    f"| {ms[f'masked {amount:.0%}']:.2f} "
                    f"| {ms[f'shrunk {amount:.0%}']:.2f} | {ms[f'TP {amount:.0%}']:.2f} | {s:.2f}x "
                    f"({lo:.2f}-{hi:.2f}) | {predicted:.2f}x | {s / predicted:.2f} | {_verdict(s, predicted)} "
                    f"| {tp:.2f}x ({tp_predicted:.2f}x) |"
                )
    return lines


def time_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | removed | funcprune: groups s | prune_groups s | shrink s | total s | TP: pruner (graph) s "
        "| step s | total s | funcprune / TP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for amount, a in r["amounts"].items():
            ours = r["groups_s"] + a["prune_s"] + a["shrink_s"]
            theirs = a["tp_build_s"] + a["tp_step_s"]
            lines.append(
                f"| {r['model']} | {amount:.0%} | {r['groups_s']:.2f} | {a['prune_s']:.3f} "
                f"| {a['shrink_s']:.2f} "
                f"| {ours:.2f} | {a['tp_build_s']:.2f} | {a['tp_step_s']:.2f} | {theirs:.2f} "
                f"| {ours / theirs:.1f} |"
            )
    return lines


def machine(threads: int) -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch_pruning

    return (
        f"{cpu}, {os.cpu_count()} cores, torch.set_num_threads({threads}), torch {torch.__version__}, "
        f"torch-pruning {getattr(torch_pruning, '__version__', '?')}, Python {platform.python_version()}, "
        f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )


def report(results: list[dict], info: str, command: str, elapsed: float, rounds_note: str) -> str:
    lines = [
        f"Generated by `{command}` in {elapsed:.0f} s on {info}.",
        "",
        "Sizes (params: all parameters; FLOPs: FlopCounterMode, conv/matmul/attention only, 2 per "
        "multiply-add) and the largest |shrunk - masked| output difference (the largest output in brackets):",
        "",
    ]
    lines += size_table(results)
    lines += [
        "",
        f"Latency (torch.no_grad, medians of interleaved rounds, {rounds_note}); speedup = dense / "
        'contender, the median of per-round ratios with quartiles; "within 10%": measured speedup >= 0.9 '
        "x the FLOPs prediction:",
        "",
    ]
    lines += latency_table(results)
    lines += [
        "",
        "Time to prune (medians of repeats): funcprune finds the groups once per model (one trace), "
        "then prune_groups and shrink (its output check included); Torch-Pruning builds its pruner (dependency "
        "graph trace) and steps:",
        "",
    ]
    lines += time_table(results)
    return "\n".join(lines) + "\n"


def pipeline(spec: Spec, *, quick: bool, amount: float = 0.5, rounds: int = 5, log=print) -> dict[str, Any]:
    """The whole pipeline, side by side in interleaved rounds (the order alternates): funcprune's
    ``groups`` + ``prune_groups`` + ``shrink`` (its output check on) against Torch-Pruning's pruner
    construction + ``step()``, on one model built once."""
    model = spec.build()
    example = spec.inputs(1, quick)
    args, kwargs = example

    def ours():
        t0 = time.perf_counter()
        groups = st.groups(model, args, kwargs)
        t1 = time.perf_counter()
        params = {n: p.detach() for n, p in model.named_parameters()}
        masks = st.prune_groups(params, groups, amount, scope="global")
        t2 = time.perf_counter()
        st.shrink(model, masks, args, groups=groups, kwargs=kwargs)
        t3 = time.perf_counter()
        return t3 - t0, (t1 - t0, t2 - t1, t3 - t2)

    def theirs():
        _, build_s, step_s = tp_prune(spec, model, example, amount)
        return build_s + step_s, (build_s, step_s)

    rows: dict[str, list] = {"ours": [], "tp": [], "ratio": []}
    for r in range(rounds):
        order = (ours, theirs) if r % 2 == 0 else (theirs, ours)
        got = {fn: fn() for fn in order}
        rows["ours"].append(got[ours])
        rows["tp"].append(got[theirs])
        rows["ratio"].append(got[ours][0] / got[theirs][0])
        log(
            f"  {spec.name} round {r + 1}: funcprune {got[ours][0]:.2f} s "
            f"(groups {got[ours][1][0]:.2f}, prune_groups {got[ours][1][1]:.2f}, shrink {got[ours][1][2]:.2f}); "
            f"Torch-Pruning {got[theirs][0]:.2f} s"
        )
    return {"model": spec.name, "amount": amount, **rows}


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def pipeline_table(results: list[dict]) -> list[str]:
    lines = [
        "| model | removed | rounds | funcprune total s | groups s | prune_groups s | shrink (checked) s | "
        "Torch-Pruning total s | pruner (graph) s | step s | funcprune / TP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ours, tp = r["ours"], r["tp"]
        lines.append(
            f"| {r['model']} | {r['amount']:.0%} | {len(ours)} | {_spread([t for t, _ in ours])} | "
            + " | ".join(_spread([parts[i] for _, parts in ours]) for i in range(3))
            + f" | {_spread([t for t, _ in tp])} | "
            + " | ".join(_spread([parts[i] for _, parts in tp]) for i in range(2))
            + f" | {_spread(r['ratio'])} |"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64x64 images, BERT seq 32, batch 1 and 4, fewer repeats")
    parser.add_argument("--models", default=",".join(SPECS), help=f"comma-separated, of {', '.join(SPECS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved latency rounds (default 7; 3 quick)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats of each build/prune/shrink (default 3; 1 quick)"
    )
    parser.add_argument("--round-to", type=int, default=1, help="kept widths a multiple of this (both libraries)")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="only the time to prune: groups + prune_groups + shrink (checked) against Torch-Pruning, "
        "interleaved rounds at 50%% (default models resnet50,bert-base)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in SPECS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(SPECS)}")
    rounds = args.rounds or (3 if args.quick else 7)
    repeats = args.repeats or (1 if args.quick else 3)
    batches = (1, 4) if args.quick else (1, 32)
    info = machine(args.threads) + (f", round_to={args.round_to} in both libraries" if args.round_to > 1 else "")
    print(info, flush=True)
    if args.pipeline:
        default = args.models == ",".join(SPECS)
        names = ["resnet50", "bert-base"] if default else [n for n in args.models.split(",") if n]
        st.groups(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)), (torch.randn(1, 2),))  # warm-up
        start = time.perf_counter()
        found = [
            pipeline(SPECS[n], quick=args.quick, rounds=args.rounds or 5, log=lambda s: print(s, flush=True))
            for n in names
        ]
        command = "python -m benchmarks.structural " + " ".join(argv if argv is not None else sys.argv[1:])
        text = (
            f"Generated by `{command.strip()}` in {time.perf_counter() - start:.0f} s on {info}.\n\n"
            "Time to prune, the whole pipeline (medians of interleaved rounds, min-max in brackets; "
            "funcprune / TP: the per-round ratio):\n\n" + "\n".join(pipeline_table(found)) + "\n"
        )
        print()
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write("# Structural pruning pipeline: funcprune vs Torch-Pruning\n\n" + text)
        return 0
    # One untimed trace first: the first trace of a process pays one-time imports and setup.
    st.groups(nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)), (torch.randn(1, 2),))
    start = time.perf_counter()
    results, failed = [], []
    command = "python -m benchmarks.structural " + " ".join(argv if argv is not None else sys.argv[1:])
    note = f"up to {rounds} rounds per batch size, each sample at least 50 ms"

    def text() -> str:
        return report(results, info, command.strip(), time.perf_counter() - start, note) + "".join(
            f"\nFAILED {f}\n" for f in failed
        )

    for name in names:
        try:
            results.append(
                measure(
                    SPECS[name],
                    quick=args.quick,
                    batches=batches,
                    rounds=rounds,
                    repeats=repeats,
                    round_to=args.round_to,
                    log=lambda s: print(s, flush=True),
                )
            )
        except Exception as err:  # noqa: BLE001 - a model that fails is reported, the others still run
            failed.append(f"{name}: {type(err).__name__}: {err}")
            print(f"{name}: FAILED {failed[-1]}", flush=True)
        if args.out:  # the models measured so far (a run stopped early keeps them)
            with open(args.out, "w") as f:
                f.write("# Structural pruning: funcprune vs Torch-Pruning\n\n" + text())
    print()
    print(text())
    if args.out:
        print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
