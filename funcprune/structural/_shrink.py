"""``shrink``: a smaller dense copy of a module with the pruned channels of its groups physically gone.

Eager only (reads which channels are kept, builds new modules): not for ``vmap``. The jobs live in
their own modules: ``_kept`` (kept channels as data), ``_build`` (plan and build), ``_resize`` (module
attributes), ``_check`` (the numerical check).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from .. import _pytree
from .._pytree import Tree
from ._args import UNSET, as_args, as_kwargs, check_module, renamed
from ._build import build
from ._check import check_shrink
from ._groups import groups as find_groups
from ._kept import as_group, kept_channels
from ._types import Group

__all__ = ["named_tensors", "shrink", "shrink_to"]


def shrink_to(
    module: nn.Module, kept: Sequence[dict[str, Any]], *, params: Tree | None = None, masks: Tree | None = None
) -> nn.Module:
    """A smaller dense copy of ``module`` keeping the channels ``kept`` names (from :func:`kept_channels`).

    Carries a shrink to a freshly built model (another process, a saved ``kept``): build the
    model as the original was built, ``shrink_to(model, kept)``, then load the shrunk model's
    ``state_dict``. Every member of every group (params and buffers) is sliced along its dim, tied
    params stay tied, and the attributes of the owning modules follow (``in_features``,
    ``out_channels``/``groups``, ``num_features``, head counts, see :func:`shrink`). The module
    itself is left untouched.

    Args:
      module: the model (of the architecture ``kept`` was made for).
      kept: what :func:`kept_channels` returned (or its JSON round trip).
      params: values to use instead of the module's own (a tree named like ``named_parameters()``).
      masks: masks applied to the values before slicing (pruned entries become zeros).

    Returns:
      A new module.

    Raises:
      ValueError: an entry that does not fit the module, keeps no channel or unequal counts per
        pool; a submodule of a type shrink cannot resize (naming it and its type).

    Example:
      >>> import json
      >>> from funcprune.structural import Group, Member
      >>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
      >>> g = Group(4, (Member("0.weight", 0), Member("0.bias", 0), Member("2.weight", 1)))
      >>> kept = json.loads(json.dumps(kept_channels({"0.bias": torch.tensor([True, False, True, False])}, [g])))
      >>> shrink_to(net, kept)
      Sequential(
        (0): Linear(in_features=2, out_features=2, bias=True)
        (1): ReLU()
        (2): Linear(in_features=2, out_features=1, bias=True)
      )
    """
    if isinstance(kept, dict) or not isinstance(kept, (list, tuple)):
        raise TypeError(f"kept must be the list kept_channels() returns, got {type(kept).__name__}")
    entries = [as_group(entry, i) for i, entry in enumerate(kept)]
    return build(module, entries, named_tensors(module, params, "params"), named_tensors(module, masks, "masks"))


def named_tensors(module: nn.Module, tree: Tree | None, what: str) -> dict[str, torch.Tensor]:
    """``tree``'s leaves by name, each checked to be a tensor of the module tensor of that name's shape."""
    if tree is None:
        return {}
    if isinstance(tree, nn.Module):
        raise TypeError(
            f"{what} must be a tree of tensors named like named_parameters() (e.g. a dict), "
            f"got the module {type(tree).__name__}"
        )
    named = _pytree.named_leaves(tree)
    known: dict[str, torch.Tensor] = dict(module.named_parameters())
    known.update(dict(module.named_buffers()))
    unknown = [name for name in named if name not in known]
    if unknown:
        raise KeyError(f"{what} name(s) {unknown} are not parameters or buffers of {type(module).__name__}")
    for name, leaf in named.items():
        _pytree.check_like(name, leaf, known[name], what[:-1])
        if what == "masks" and leaf.is_meta:
            raise ValueError(
                f"masks {name!r} is on the meta device: shrink reads which channels the masks keep "
                "and needs their values"
            )
    return named


def shrink(
    module: nn.Module,
    masks: Tree,
    args: Any = UNSET,
    params: Tree | None = None,
    *,
    groups: Sequence[Group] | None = None,
    kwargs: dict[str, Any] | None = UNSET,
    check: bool = True,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    example_args: Any = UNSET,
    example_kwargs: Any = UNSET,
) -> nn.Module:
    """A new, smaller dense module in which the channels ``masks`` prune in each group are gone.

    ``module`` is deep-copied (it stays as it was); every member of every group, BatchNorm
    statistics and other buffers included, is sliced along its dim at the kept channels, the
    other masked entries are zeroed, tied params stay tied, and the owning modules' attributes
    follow: ``Conv1d/2d/3d`` (and transposed) ``in_channels``/``out_channels``/``groups``
    (depthwise: ``groups`` follows the channels; grouped: an equal count per group),
    ``Linear``, ``BatchNorm``/``InstanceNorm`` ``num_features``, ``LayerNorm``/``RMSNorm``
    ``normalized_shape``, ``GroupNorm`` ``num_channels`` (divisible by ``num_groups``),
    ``Embedding`` ``embedding_dim``, ``PReLU``, ``nn.MultiheadAttention`` (``embed_dim``,
    ``num_heads``/``head_dim``, ``kdim``/``vdim``; where its q/k/v width no longer equals its
    input width, which torch's forward requires, it becomes :class:`ShrunkMultiheadAttention`), and
    transformers' ``Conv1D`` (``nf``/``nx``) and head counts of BERT, GPT-2, Llama and T5 attention
    (``num_attention_heads``/``all_head_size``, ``num_heads``/``split_size``,
    ``num_key_value_groups``, ``n_heads``). A member owned by any other module type raises before
    anything is built.

    With ``check=True`` (default) the shrunk module is run on ``args`` in eval mode and compared
    with ``funcprune.functional_call(module, params, args, masks=masks)`` (each run on its own copy
    of the inputs, so a forward that writes its inputs in place changes neither them nor the
    other run); every tensor of the output is compared (inside tuples, lists, dicts, dataclasses
    and registered pytree nodes: an output the check cannot look inside is refused), each within
    ``rtol`` of its entries plus ``atol`` times its largest reference magnitude. Outputs that
    differ raise ``ValueError`` naming the groups whose shrink alone changes the output and by how
    much (and, where the masks cover only part of a group, why), so a silently wrong model is never
    returned. Groups marked inexact (a normalization across their channels) that the masks prune
    differ by design: the check then warns instead. A shrunk model that cannot run raises, always.

    Args:
      module: the model.
      masks: channel masks consistent across each group (:func:`funcprune.structural.prune_groups`).
      args: positional inputs for tracing (when ``groups`` is None) and the check, as
        ``functional_call`` takes them: a tuple is the arguments, anything else the one argument.
      params: values to use instead of the module's own (named like ``named_parameters()``).
      groups: the groups (default: ``funcprune.structural.groups(module, args, kwargs,
        inexact=True)``; groups the masks do not prune are left as they are).
      kwargs: keyword inputs for tracing and the check.
      check: verify the shrunk module against the masked one.
      rtol, atol: the check's tolerances (``atol`` relative to each output's largest magnitude).
      example_args, example_kwargs: the old names of ``args`` and ``kwargs`` (deprecated: a
        ``DeprecationWarning``; they go in the next minor release).

    Returns:
      The new module, in the module's training mode.

    Raises:
      TypeError: ``module`` not a module, ``masks``/``params`` not a tree of tensors.
      ValueError: members of a group that disagree on the kept channels (naming them), a group
        keeping no channel, a submodule shrink cannot resize (naming it and its type), masks on the
        meta device (or, with ``check=True``, module tensors there), an output the check cannot
        compare, or a failed check (naming the groups and the difference).

    Example:
      >>> from funcprune.structural import Group, Member, prune_groups
      >>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
      ...                           torch.nn.Linear(8, 2)).eval()
      >>> g = Group(8, (Member("0.weight", 0), Member("0.bias", 0), Member("1.weight", 0), Member("1.bias", 0),
      ...               Member("1.running_mean", 0, buffer=True), Member("1.running_var", 0, buffer=True),
      ...               Member("3.weight", 1)))
      >>> params = dict(net.named_parameters())
      >>> small = shrink(net, prune_groups(params, [g], 0.5), torch.randn(4, 3), groups=[g])
      >>> small[0].out_features, small[1].num_features, small[1].running_mean.shape, small[3].in_features
      (4, 4, torch.Size([4]), 4)
    """
    args = renamed("shrink", args, example_args, "args", "example_args", ())
    kwargs = as_kwargs("shrink", renamed("shrink", kwargs, example_kwargs, "kwargs", "example_kwargs", None))
    check_module("shrink", module)
    args = as_args(args)
    named_masks = named_tensors(module, masks, "masks")
    named_params = named_tensors(module, params, "params")
    if check:
        meta = [
            n
            for n, t in list(module.named_parameters()) + list(module.named_buffers())
            if t.is_meta and n not in named_params
        ]
        if meta:
            raise ValueError(
                f"shrink's check runs the model, but {meta[:4]} are on the meta device: pass values "
                "with params= or check=False"
            )
    if groups is None:  # inexact groups too: the masks may prune them (prune_groups(..., include_inexact=True))
        groups = find_groups(module, args, kwargs, inexact=True)
    kept = kept_channels(named_masks, groups)
    entries = [as_group(entry, i) for i, entry in enumerate(kept)]
    new = build(module, entries, named_params, named_masks)
    if check:
        check_shrink(module, new, groups, entries, named_params, named_masks, args, kwargs, rtol, atol)
    return new
