"""Prune a model's stack of repeated blocks one shot from calibration batches (the papers' procedure).

:func:`prune` captures the first block's inputs (positional and keyword: attention masks,
position embeddings) once, then for every block collects the input statistics of its linear
layers (:mod:`funcprune.oneshot.stats`, all-reduced over ranks when torch.distributed is
initialized), prunes each layer with :func:`prune_layer`, and runs the block again with the
pruned weights so that its outputs feed the next block (``sequential=True``, as the Wanda and
SparseGPT scripts do) or takes every statistic from the dense model in one pass
(``sequential=False``). Only one block's statistics and one block boundary's activations (per
amount level) are alive at once. Blocks run through :func:`torch.func.functional_call`: the
model's parameters are never written, and ``device=`` copies one block at a time to the device.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, NamedTuple, cast

import torch

from .._amount import validate_amount
from ..methods import l1_unstructured
from ..patterns import nm_structured
from . import distributed
from .blocks import (
    block_values,
    capture,
    eval_mode,
    find_blocks,
    find_layers,
    hidden,
    linear_weight,
    run_block,
    without_hidden,
)
from .methods import check_pattern, outlier_ratio, sparsegpt, wanda, wanda_scores
from .methods import owl as owl_amounts
from .stats import Collector, LayerStats, all_reduce

__all__ = ["prune", "prune_layer", "find_blocks", "Result", "LayerReport", "METHODS"]

METHODS = ("magnitude", "wanda", "sparsegpt")


class LayerReport(NamedTuple):
    """What :func:`prune` did to one weight (tuples over the levels when ``amount`` is a list)."""

    block: int  #: index of the block in the block list
    amount: float | int | tuple  #: the amount applied (OWL's per-block amount, or the given one)
    sparsity: float | tuple  #: the fraction of the weight pruned
    tokens: int  #: calibration token rows its statistics summed (0 for magnitude)


class Result(NamedTuple):
    """The pruned model as trees keyed like ``model.named_parameters()``."""

    params: dict[str, torch.Tensor]  #: the model's own tensors, SparseGPT's updated weights in their place
    masks: dict[str, torch.Tensor]  #: bool keep masks of the pruned weights
    layers: dict[str, LayerReport]  #: per pruned weight
    stacked: str  #: "none" (one amount), "masks" or "both" (K levels): ``fp.stacked_call``'s ``stacked``


def prune_layer(
    weight: torch.Tensor,
    stats: LayerStats | None,
    method: str,
    amount,
    *,
    pattern=None,
    mask: torch.Tensor | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's step of :func:`prune`: ``(weight after pruning, keep mask)`` in the Linear layout ``(out, in)``.

    ``"magnitude"`` is torch's ``l1_unstructured`` over the whole weight (per row N:M of ``|W|``
    with a pattern), ``"wanda"`` :func:`funcprune.oneshot.wanda` on ``sqrt(stats.sumsq)``,
    ``"sparsegpt"`` :func:`funcprune.oneshot.sparsegpt` on ``stats.hessian``. The weight is
    returned as given except for SparseGPT.
    """
    if method == "magnitude":
        if pattern is not None:
            return weight, nm_structured(weight, pattern[0], pattern[1], dim=1, mask=mask)
        return weight, l1_unstructured(weight, amount, mask=mask)
    needed = "sumsq" if method == "wanda" else "hessian"
    statistic = None if stats is None else getattr(stats, needed)
    if statistic is None:
        raise ValueError(
            f"method {method!r} needs the layer's statistics with {needed} (LayerStats.{needed}), "
            f"got {'no statistics' if stats is None else 'none'}"
        )
    if method == "wanda":
        return weight, wanda(weight, statistic.sqrt(), amount, pattern=pattern, mask=mask)
    return sparsegpt(weight, statistic, amount, pattern=pattern, mask=mask, block_size=block_size, damp=damp)


def _levels(method: str, amount, owl: bool, pattern) -> tuple[list, bool]:
    stacked = isinstance(amount, (list, tuple))
    levels = list(amount) if stacked else [amount]
    if not levels:
        raise ValueError("amount is an empty list: give one level or more")
    for level in levels:
        if level is None and pattern is not None and not owl:
            continue  # an N:M pattern fixes the amount
        if isinstance(level, torch.Tensor):
            raise TypeError(f"amount must be Python numbers for one-shot pruning, got a tensor {level!r}")
        validate_amount(level)
        if (method == "sparsegpt" or owl) and isinstance(level, numbers.Integral):
            raise TypeError(f"amount={level!r}: {'OWL' if owl else 'sparsegpt'} takes fractions (floats in [0, 1])")
    return levels, stacked


def _check(model, method, dtype, sequential, pattern, targets, block_size) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype (of the statistics) must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(sequential, bool):
        raise TypeError(f"sequential must be a bool, got {sequential!r}")
    if not any(targets):
        raise ValueError(f"no linear weight selected in the blocks of {type(model).__name__}: check include=")
    for layers in targets:
        for name, (_, module) in layers.items():
            if method == "sparsegpt" and pattern is not None and block_size % pattern[1]:
                raise ValueError(f"block_size={block_size} must be a multiple of the pattern's group size {pattern[1]}")
            check_pattern(pattern, linear_weight(module, module.weight).shape[1], name)


def _collect(block, values, layers, hs, entries, *, sumsq, hessian, dtype, where, group, keep_outputs):
    """Run the block on every batch with the statistics hooks on; (all-reduced stats, outputs or None)."""
    modules = {name: (module, linear_weight(module, module.weight).shape[1]) for name, (_, module) in layers.items()}
    outs: Any = [] if keep_outputs else None  # a list exactly when keep_outputs
    with (
        Collector(modules, sumsq=sumsq, hessian=hessian, dtype=dtype) as collector,
        distributed.block_runner(block, values) as run,
    ):
        for h, entry in zip(hs, entries):
            collector.new_batch()
            out = run_block(run, h, entry)
            if keep_outputs:
                outs.append(out)
    stats = all_reduce(collector.stats(), group)
    for name in layers:
        key = collector.key_of.get(name)
        if key is None:
            raise ValueError(f"{name}: the layer received no input during calibration in {where}")
        for value in stats[key][:2]:
            if value is not None and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name}: non-finite (NaN/inf) calibration activations at its input in {where}")
    return {name: stats[collector.key_of[name]] for name in layers}, outs


def _owl_ratios(blocks, prefix, targets, captured, device, dtype, threshold, group) -> list[float]:
    """OWL's outlier ratio of every block, from the dense model's Wanda scores (one dense pass)."""
    hs = [hidden(entry) for entry in captured]
    ratios = []
    for i, block in enumerate(blocks):
        values = block_values(block, device)
        stats, hs = _collect(
            block,
            values,
            targets[i],
            hs,
            captured,
            sumsq=True,
            hessian=False,
            dtype=dtype,
            where=f"block {i} ({prefix}.{i})",
            group=group,
            keep_outputs=True,
        )
        scores = [
            wanda_scores(linear_weight(m, values[sub + ".weight"]), stats[n].sumsq.sqrt())
            for n, (sub, m) in targets[i].items()
        ]
        ratios.append(outlier_ratio(scores, threshold) if scores else 0.0)
    return ratios


def prune(
    model: torch.nn.Module,
    calibration: Iterable[Any],
    method: str,
    amount,
    *,
    pattern=None,
    blocks: str | None = None,
    include=None,
    owl: bool = False,
    owl_threshold: float = 5.0,
    owl_lam: float = 0.08,
    sequential: bool = True,
    device=None,
    group=None,
    block_size: int = 128,
    damp: float = 0.01,
    dtype: torch.dtype = torch.float32,
) -> Result:
    """Prune the linear layers of a model's blocks one shot from calibration batches.

    Args:
      model: a model with a stack of repeated blocks (any transformers decoder); not modified (it
        runs in eval mode, restored afterwards).
      calibration: an iterable of batches: a tensor (the first argument, e.g. ``input_ids``), a
        tuple of args or a dict of kwargs.
      method: ``"magnitude"`` (torch's ``l1_unstructured`` per layer, no calibration needed but
        OWL's), ``"wanda"`` or ``"sparsegpt"``.
      amount: the fraction of every layer to prune (an int: a count, wanda/magnitude only; OWL's
        per-block amounts average to it), or a list of K levels: K results at once, stacked.
      pattern: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs of each row (``amount``
        then only feeds OWL; without OWL it is ignored and may be None).
      blocks: the dotted name of the ``nn.ModuleList`` of blocks (found for transformers decoders).
      include: which weights: None (every ``nn.Linear``/``Conv1D`` in the blocks), names, or a
        predicate ``(name, param) -> bool``.
      owl: per-block amounts from OWL's outlier ratios of the dense model (threshold
        ``owl_threshold``, ``lam=owl_lam``).
      sequential: feed each block the pruned previous blocks' outputs (the papers' procedure);
        False takes every statistic from the dense model in one pass (K levels share it).
      device: run one block at a time there (the model stays where it is).
      group: the process group whose ranks' statistics are summed (default: the default group
        when torch.distributed is initialized).
      block_size, damp: SparseGPT's.
      dtype: the statistics' dtype (float32, or float64 for exact comparisons).

    Returns:
      A :class:`Result`: run it with ``fp.functional_call(model, r.params, args, masks=r.masks)``
      (or ``fp.stacked_call(..., stacked=r.stacked)`` for K levels); masks stacked as
      :func:`funcprune.stack` stacks them when ``amount`` is a list.

    Raises:
      ValueError, TypeError, KeyError: bad method, amount, pattern (naming the layer it does not
        divide), blocks (saying what to pass), include (a non-Linear weight), an empty
        calibration, NaN/inf activations (naming the block and layer); the model is unchanged.

    Example:
      >>> import transformers
      >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      ...                                num_attention_heads=4, num_key_value_heads=2)
      >>> model = transformers.LlamaForCausalLM(cfg)
      >>> r = prune(model, [torch.randint(0, 64, (2, 16))], "wanda", 0.5)
      >>> r.masks["model.layers.0.mlp.up_proj.weight"].float().mean().item()
      0.5
    """
    levels, stacked = _levels(method, amount, owl, pattern)
    block_name, block_list = find_blocks(model, blocks)
    pattern = check_pattern(pattern)
    targets = find_layers(model, block_name, block_list, include)
    _check(model, method, dtype, sequential, pattern, targets, block_size)
    device = torch.device(device) if device is not None else None
    needs = method != "magnitude"
    with eval_mode(model):
        batches = list(calibration)
        layer_shapes = [
            (n, tuple(cast(torch.Tensor, m.weight).shape)) for layers in targets for n, (_, m) in layers.items()
        ]
        distributed.check_same(
            group,
            batches=len(batches),
            method=method,
            amount=levels,
            pattern=pattern,
            blocks=block_name,
            layers=layer_shapes,
            owl=(owl, owl_threshold, owl_lam),
            sequential=sequential,
            dtype=str(dtype),
            block_size=block_size,
            damp=damp,
        )
        if not batches:
            raise ValueError("calibration is empty: pass an iterable of one batch or more")
        if device is not None and any(distributed.is_fsdp(m) for m in model.modules()):
            raise ValueError(
                f"device={device} moves one block at a time to the device; an FSDP2 model already "
                "runs on its ranks' devices: leave device=None"
            )
        captured = capture(model, block_list[0], batches, device) if needs or owl else []
        per_block = [levels] * len(block_list)
        if owl:
            ratios = _owl_ratios(block_list, block_name, targets, captured, device, dtype, owl_threshold, group)
            by_level = [owl_amounts(ratios, level, lam=owl_lam) for level in levels]
            per_block = [[amounts[i] for amounts in by_level] for i in range(len(block_list))]
        work = _Work(method, pattern, block_size, damp, levels)
        acts = [[hidden(e) for e in captured] for _ in (levels if sequential else levels[:1])]
        captured = [without_hidden(e) for e in captured]  # one boundary's activations alive: those in acts
        stats: list | None  # per level; dropped after each block
        collected: list | None
        for i, block in enumerate(block_list):
            where = f"block {i} ({block_name}.{i})"
            values = block_values(block, device)
            layers = targets[i]
            stats, dense_outs = [{}] * len(acts), None
            if needs and layers:
                collected = [
                    _collect(
                        block,
                        values,
                        layers,
                        hs,
                        captured,
                        sumsq=method == "wanda",
                        hessian=method == "sparsegpt",
                        dtype=dtype,
                        where=where,
                        group=group,
                        keep_outputs=not sequential,
                    )
                    for hs in acts
                ]
                stats = [s for s, _ in collected]
                dense_outs = collected[0][1]
            pruned = work.block(i, layers, values, stats, per_block[i])
            stats = collected = None  # this block's statistics die here, before the next block's are summed
            if not needs or not captured:
                continue
            if not sequential:
                if dense_outs is None:
                    with distributed.block_runner(block, values) as run:
                        dense_outs = [run_block(run, h, e) for h, e in zip(acts[0], captured)]
                acts[0] = dense_outs
                continue
            for level, hs in enumerate(acts):
                with distributed.block_runner(block, {**values, **pruned[level]}) as run:
                    acts[level] = [run_block(run, h, e) for h, e in zip(hs, captured)]
    return work.result(model, stacked)


class _Work:
    """Pruned weights and masks of every level, gathered block by block."""

    def __init__(self, method, pattern, block_size, damp, levels) -> None:
        self.method, self.pattern, self.block_size, self.damp, self.levels = method, pattern, block_size, damp, levels
        self.weights: list[dict[str, torch.Tensor]] = [{} for _ in levels]
        self.masks: list[dict[str, torch.Tensor]] = [{} for _ in levels]
        self.reports: dict[str, list] = {}

    def block(self, i, layers, values, stats, amounts) -> list[dict[str, torch.Tensor]]:
        """Prune the block's layers at every level; per level the block values to run it pruned."""
        pruned: list[dict[str, torch.Tensor]] = [{} for _ in self.levels]
        for name, (sub, module) in layers.items():
            param = module.weight
            weight = linear_weight(module, values[sub + ".weight"])
            rows = []
            for level, amount in enumerate(amounts):
                layer_stats = stats[min(level, len(stats) - 1)].get(name)
                try:
                    new, keep = prune_layer(
                        weight,
                        layer_stats,
                        self.method,
                        amount,
                        pattern=self.pattern,
                        block_size=self.block_size,
                        damp=self.damp,
                    )
                except (ValueError, TypeError) as err:
                    raise type(err)(f"{name}: {err}") from err
                run = new if self.method == "sparsegpt" else torch.where(keep, weight, 0)
                pruned[level][sub + ".weight"] = linear_weight(module, run)
                keep_param = linear_weight(module, keep).contiguous().to(param.device)
                self.masks[level][name] = keep_param
                if self.method == "sparsegpt":
                    self.weights[level][name] = linear_weight(module, new).contiguous().to(param.device)
                tokens = 0 if layer_stats is None else int(layer_stats.tokens)
                rows.append((amount, 1.0 - float(keep.sum()) / keep.numel(), tokens))
            self.reports[name] = [i, rows]
        return pruned

    def result(self, model, stacked: bool) -> Result:
        params = dict(model.named_parameters())
        if not stacked:
            reports = {n: LayerReport(b, r[0][0], r[0][1], r[0][2]) for n, (b, r) in self.reports.items()}
            return Result({**params, **self.weights[0]}, self.masks[0], reports, "none")
        k = len(self.levels)
        reports = {
            n: LayerReport(b, tuple(x[0] for x in r), tuple(x[1] for x in r), r[0][2])
            for n, (b, r) in self.reports.items()
        }
        masks = {n: _stack_popping(self.masks, n) for n in list(self.masks[0])}
        if self.method != "sparsegpt":
            return Result(params, masks, reports, "masks")
        stacked_params = {
            n: (_stack_popping(self.weights, n) if n in self.weights[0] else p.detach().expand(k, *p.shape))
            for n, p in params.items()
        }
        return Result(stacked_params, masks, reports, "both")


def _stack_popping(levels: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    """The K levels' tensors of ``name`` stacked, each dropped from its level as it is stacked, so that
    stacking all the layers never holds two copies of the K levels."""
    return torch.stack([level.pop(name) for level in levels])
