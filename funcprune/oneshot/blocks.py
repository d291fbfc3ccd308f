"""A model's stack of repeated blocks: finding it, its linear layers, capturing and running its inputs.

:func:`find_blocks` locates the ``nn.ModuleList`` (where transformers keeps decoder blocks, or a
dotted name), :func:`find_layers` the ``nn.Linear`` (and transformers' ``Conv1D``) weights inside, and
:func:`capture` the first block's positional and keyword inputs for every calibration batch, by
stopping the model's forward there; :func:`run_block` then runs a block on hidden states with
the rest of those inputs.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, cast

import optree
import torch

from . import distributed

__all__ = [
    "AUTO_BLOCKS",
    "find_blocks",
    "is_conv1d",
    "find_layers",
    "linear_weight",
    "capture",
    "run_block",
    "hidden",
    "without_hidden",
    "block_values",
    "eval_mode",
]

#: where transformers keeps the decoder blocks (Llama, Qwen2, Mistral, Gemma, Phi; GPT-2; OPT; GPT-NeoX; bare
#: models)
AUTO_BLOCKS = (
    "model.layers",
    "transformer.h",
    "model.decoder.layers",
    "gpt_neox.layers",
    "model.language_model.layers",
    "layers",
    "h",
    "decoder.layers",
    "transformer.blocks",
    "blocks",
)


class _Stop(Exception):
    pass


def find_blocks(model: torch.nn.Module, blocks: str | None = None) -> tuple[str, torch.nn.ModuleList]:
    """The dotted name and the ``nn.ModuleList`` of the model's repeated blocks.

    Args:
      model: the model.
      blocks: the dotted name (e.g. ``"model.layers"``); None looks where transformers keeps them
        (:data:`AUTO_BLOCKS`).

    Raises:
      ValueError: not found, or not a non-empty ``nn.ModuleList``: the message lists the model's
        ModuleLists to pass as ``blocks=``.
    """
    lists = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    hint = f"pass blocks='<dotted name of the nn.ModuleList of blocks>' (this model's ModuleLists: {lists or 'none'})"
    if blocks is not None:
        if not isinstance(blocks, str):
            raise TypeError(f"blocks must be a dotted module name, got {blocks!r}")
        try:
            found = model.get_submodule(blocks)
        except AttributeError:
            raise ValueError(f"blocks={blocks!r} is not a submodule of {type(model).__name__}: {hint}") from None
        if not isinstance(found, torch.nn.ModuleList) or not len(found):
            raise ValueError(f"blocks={blocks!r} is a {type(found).__name__}, not a non-empty nn.ModuleList: {hint}")
        return blocks, found
    for name in AUTO_BLOCKS:
        if name in lists:
            return name, cast(torch.nn.ModuleList, model.get_submodule(name))  # lists holds ModuleLists only
    raise ValueError(f"could not find the stack of repeated blocks of {type(model).__name__}: {hint}")


def is_conv1d(module: torch.nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is ``(in_features, out_features)``."""
    return type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None


def find_layers(model: torch.nn.Module, prefix: str, blocks, include) -> list[dict[str, tuple[str, torch.nn.Module]]]:
    """Per block: ``{param name: (module name inside the block, module)}`` of the selected linear weights."""
    found = []
    for i, block in enumerate(blocks):
        layers = {}
        for sub, module in block.named_modules():
            if isinstance(module, torch.nn.Linear) or is_conv1d(module):
                layers[f"{prefix}.{i}.{sub}.weight"] = (sub, module)
        found.append(layers)
    every = {name: t for layers in found for name, t in layers.items()}
    if include is None:
        return found
    params = dict(model.named_parameters())
    if callable(include):
        return [{n: t for n, t in layers.items() if include(n, params[n])} for layers in found]
    if isinstance(include, str):
        raise TypeError(f"include must be a list of names or a predicate, got the string {include!r}")
    names = set(include)
    for name in sorted(names):
        if name not in params:
            raise KeyError(f"include names {name!r}, which is not a parameter of {type(model).__name__}")
        if name not in every:
            raise ValueError(
                f"include names {name!r}, which is not the weight of an nn.Linear inside the blocks "
                f"{prefix!r} (one-shot methods prune linear layers from their inputs' statistics)"
            )
    return [{n: t for n, t in layers.items() if n in names} for layers in found]


def linear_weight(module: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    return value.t() if is_conv1d(module) else value


def _to_device(tree: Any, device: torch.device | None) -> Any:
    if device is None:
        return tree
    return optree.tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, tree, none_is_leaf=True)


def _call(model: torch.nn.Module, batch: Any, accepts_cache: bool) -> None:
    extra = {"use_cache": False} if accepts_cache else {}
    if isinstance(batch, dict):
        model(**batch, **extra)
    elif isinstance(batch, (tuple, list)):
        model(*batch, **extra)
    else:
        model(batch, **extra)


def capture(model, first, batches, device) -> list[tuple[tuple, dict]]:
    """The first block's ``(args, kwargs)`` for every batch (on ``device``), by stopping the model there."""
    accepts_cache = "use_cache" in inspect.signature(model.forward).parameters
    home = next(model.parameters()).device
    captured = []

    def catch(module, args, kwargs):
        captured.append(_to_device((args, dict(kwargs)), device))
        raise _Stop

    # first among the block's hooks: FSDP2's would gather the block only to be stopped
    handle = first.register_forward_pre_hook(catch, with_kwargs=True, prepend=True)
    try:
        for index, batch in enumerate(batches):
            try:
                _call(model, _to_device(batch, home), accepts_cache)
            except _Stop:
                continue
            raise ValueError(f"calibration batch {index} ran through the model without reaching its first block")
    finally:
        handle.remove()
        distributed.settle(model)
    if not captured:
        raise ValueError("calibration is empty: pass an iterable of one batch or more")
    return captured


def run_block(run: Callable, h: torch.Tensor, entry) -> torch.Tensor:
    """The block's output on hidden states ``h`` with the rest of a captured ``entry``; ``run`` from a block runner."""
    args, kwargs = entry
    if args:
        out = run((h, *args[1:]), kwargs)
    else:
        out = run((), {**kwargs, "hidden_states": h})
    return out[0] if isinstance(out, (tuple, list)) else out


def hidden(entry) -> torch.Tensor:
    args, kwargs = entry
    return args[0] if args else kwargs["hidden_states"]


def without_hidden(entry):
    args, kwargs = entry
    if args:
        return (None, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": None}


def block_values(block: torch.nn.Module, device) -> dict[str, torch.Tensor]:
    values: dict[str, torch.Tensor] = dict(block.named_parameters())
    values.update(block.named_buffers())
    return {n: (v.to(device) if device is not None else v).detach() for n, v in values.items()}


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode
