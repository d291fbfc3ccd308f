"""``shrink``: a smaller dense copy of a module with the pruned channels of its groups physically gone.

Eager only (reads which channels are kept, builds new modules): not for ``vmap`` or ``meta``.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _pytree
from .._masking import masked
from .._errors import unknown_names
from .._pytree import Tree
from ._prune import channel_any, check_groups, describe_group
from ._types import Group, Member

__all__ = ["ShrunkMultiheadAttention", "kept_channels", "shrink", "shrink_to"]


# ----------------------------------------------------------------------------------------------
# Kept channels: read from the masks, carried as plain data.

def kept_channels(masks: Tree, groups: Sequence[Group]) -> List[Dict[str, Any]]:
    """Per group, the channels the masks keep, as plain data (JSON- and ``torch.save``-able).

    A channel is kept in a member when any entry of its slice survives the member's mask; every
    param member with a mask must agree (members without one have no say; a group none of whose
    members is masked keeps every channel). The entries describe their group fully, so
    :func:`shrink_to` needs nothing else to redo the shrink on a freshly built model.

    Args:
      masks: a masks tree (e.g. from :func:`funcprune.structural.prune_groups`).
      groups: the groups the masks were made for.

    Returns:
      One dict per group: ``{"channels": int, "kind": str, "pools": int, "members": [[name, dim,
      offset, unit, buffer], ...], "kept": [channel indices, increasing]}``.

    Raises:
      ValueError: two members of a group keep different channels (naming both and the channels),
        or a group does not fit a mask's shape (see :func:`funcprune.structural.check_groups`).

    Example:
      >>> from funcprune.structural import Group, Member
      >>> g = Group(3, (Member("a.weight", 0), Member("b.weight", 1)))
      >>> masks = {"a.weight": torch.tensor([[True], [False], [True]]), "b.weight": torch.tensor([[True, False, True]])}
      >>> kept_channels(masks, [g])[0]["kept"]
      [0, 2]
    """
    named = {name: mask for name, mask in _pytree.named_leaves(masks).items() if isinstance(mask, torch.Tensor)}
    shapes = {name: tuple(mask.shape) for name, mask in named.items()}
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, Group):
            raise TypeError(f"groups[{i}] must be a funcprune.structural.Group, got {type(group).__name__}")
        # members without a mask have no say: check and read only those that have one
        mine = group._replace(members=tuple(m for m in group.members if not m.buffer and m.name in named))
        kept, first = None, None
        if mine.members:
            try:
                (mine,) = check_groups([mine], shapes, "masks")
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise type(err)(f"groups[{i}]: {err}") from err
            for m in mine.members:
                keep = named[m.name]
                keep = keep if keep.dtype == torch.bool else keep != 0
                live = channel_any(keep, m, group.channels)
                if kept is None:
                    kept, first = live, m
                elif not torch.equal(kept, live):
                    diff = (kept != live).nonzero().flatten().tolist()
                    raise ValueError(
                        f"{describe_group(i, group)}: member {m.name!r} (dim {m.dim}) and member {first.name!r} "
                        f"(dim {first.dim}) keep different channels (they differ at channels {diff[:8]}"
                        f"{' ...' if len(diff) > 8 else ''}); masks from prune_groups agree across a group")
        indices = list(range(group.channels)) if kept is None else kept.nonzero().flatten().tolist()
        out.append({"channels": group.channels, "kind": group.kind, "pools": group.pools,
                    "members": [[m.name, m.dim, m.offset, m.unit, m.buffer] for m in group.members],
                    "kept": indices})
    return out


def _as_group(entry: Dict[str, Any], index: int) -> Tuple[Group, List[int]]:
    try:
        members = tuple(Member(str(n), int(d), int(o), int(u), bool(b)) for n, d, o, u, b in entry["members"])
        group = Group(int(entry["channels"]), members, str(entry.get("kind", "channels")), int(entry.get("pools", 1)))
        kept = [int(c) for c in entry["kept"]]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"kept[{index}] is not an entry of kept_channels(): {err!r}") from err
    if not kept:
        raise ValueError(f"kept[{index}] ({describe_group(index, group)}) keeps no channel")
    if kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= group.channels:
        raise ValueError(f"kept[{index}] ({describe_group(index, group)}): kept channels must be increasing indices in "
                         f"[0, {group.channels}), got {kept[:8]}{' ...' if len(kept) > 8 else ''}")
    per = group.channels // group.pools
    counts = [sum(1 for c in kept if c // per == p) for p in range(group.pools)]
    if len(set(counts)) > 1:
        raise ValueError(f"kept[{index}] ({describe_group(index, group)}): {group.pools} pools need an equal count of "
                         f"kept channels each, got {counts}")
    return group, kept


# ----------------------------------------------------------------------------------------------
# Module attributes that follow the tensors' shapes.

def _fix_linear(sub, path):
    sub.out_features, sub.in_features = sub.weight.shape


def _fix_conv(sub, path):
    w = sub.weight
    a, b = w.shape[0], w.shape[1]  # conv: (out, in / groups, ...); transposed: (in, out / groups, ...)
    old_a = sub.in_channels if sub.transposed else sub.out_channels
    old_b_total = sub.out_channels if sub.transposed else sub.in_channels
    groups = sub.groups
    if groups > 1 and old_b_total == groups and b == 1:  # depthwise-style: one channel per conv group on dim 1
        per = old_a // groups
        if a % per:
            raise ValueError(f"submodule {path!r} ({type(sub).__name__}, groups={groups}): {a} channels left on dim 0 "
                             f"is not a multiple of the {per} per conv group")
        groups = a // per
    elif a % groups:
        raise ValueError(f"submodule {path!r} ({type(sub).__name__}, groups={groups}): {a} channels left on dim 0 "
                         f"are not divisible by groups={groups} (a grouped conv prunes an equal count per group)")
    sub.groups = groups
    if sub.transposed:
        sub.in_channels, sub.out_channels = a, b * groups
    else:
        sub.out_channels, sub.in_channels = a, b * groups


def _fix_norm(sub, path):
    ref = sub.running_mean if getattr(sub, "running_mean", None) is not None else sub.weight
    sub.num_features = ref.shape[0]


def _fix_layer_norm(sub, path):
    if sub.weight is None:
        raise ValueError(f"submodule {path!r} ({type(sub).__name__}) has no affine weight to read its new "
                         "normalized_shape from")
    sub.normalized_shape = tuple(sub.weight.shape)


def _fix_group_norm(sub, path):
    sub.num_channels = sub.weight.shape[0]
    if sub.num_channels % sub.num_groups:
        raise ValueError(f"submodule {path!r} (GroupNorm, num_groups={sub.num_groups}): {sub.num_channels} channels "
                         "left are not divisible by num_groups")


def _fix_embedding(sub, path):
    sub.num_embeddings, sub.embedding_dim = sub.weight.shape


def _fix_prelu(sub, path):
    sub.num_parameters = sub.weight.numel()


class ShrunkMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose query/key/value width may differ from its input width.

    torch's own forward requires ``q/k/v width == embed_dim``; a shrink that removes heads but not
    embedding channels (or the other way round) gets this subclass: the same parameters and
    ``state_dict`` keys, a plain forward (projections, scaled dot products, softmax, dropout, output
    projection) for the usual arguments. ``bias_k``/``bias_v`` and ``add_zero_attn`` are refused.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if self.bias_k is not None or self.add_zero_attn:
            raise NotImplementedError("ShrunkMultiheadAttention: bias_k/bias_v and add_zero_attn are not supported")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        length, batch, _ = query.shape
        source = key.shape[0]
        heads, head_dim = self.num_heads, self.head_dim
        if self._qkv_same_embed_dim:
            w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        def split(x, w, b, n):
            return F.linear(x, w, b).reshape(n, batch, heads, head_dim).permute(1, 2, 0, 3)

        q, k, v = split(query, w_q, b_q, length), split(key, w_k, b_k, source), split(value, w_v, b_v, source)
        scores = (q * head_dim ** -0.5) @ k.transpose(-2, -1)  # (batch, heads, length, source)
        bias = None
        if attn_mask is not None:
            bias = attn_mask if attn_mask.dim() == 2 else attn_mask.reshape(batch, heads, length, source)
            if bias.dtype == torch.bool:
                bias = torch.zeros_like(bias, dtype=scores.dtype).masked_fill(bias, -math.inf)
        elif is_causal:
            bias = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
            bias = torch.zeros_like(bias, dtype=scores.dtype).masked_fill(bias, -math.inf)
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(batch, 1, 1, source)
            if pad.dtype == torch.bool:
                pad = torch.zeros_like(pad, dtype=scores.dtype).masked_fill(pad, -math.inf)
            bias = pad if bias is None else bias + pad
        if bias is not None:
            scores = scores + bias
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = (weights @ v).permute(2, 0, 1, 3).reshape(length, batch, heads * head_dim)
        out = self.out_proj(out)
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights


def _fix_mha(sub, path):
    """nn.MultiheadAttention: head counts and widths; a q/k/v width other than the input width
    turns it into :class:`ShrunkMultiheadAttention` (torch's forward ties the two)."""
    if sub._qkv_same_embed_dim:
        inner, embed = sub.in_proj_weight.shape[0] // 3, sub.in_proj_weight.shape[1]
        sub.kdim = sub.vdim = embed
    else:
        inner, embed = sub.q_proj_weight.shape
        sub.kdim, sub.vdim = sub.k_proj_weight.shape[1], sub.v_proj_weight.shape[1]
    head_dim = sub.head_dim
    if inner % head_dim == 0 and inner // head_dim <= sub.num_heads:  # whole heads went
        sub.num_heads = inner // head_dim
    elif inner % sub.num_heads == 0:
        sub.head_dim = inner // sub.num_heads
    else:
        raise ValueError(f"submodule {path!r} (nn.MultiheadAttention): width {inner} is neither whole heads of "
                         f"{head_dim} nor {sub.num_heads} heads of equal size")
    sub.embed_dim = embed
    if inner != embed or sub.out_proj.weight.shape[0] != embed:
        if sub.bias_k is not None or sub.add_zero_attn:
            raise ValueError(f"submodule {path!r} (nn.MultiheadAttention with bias_k/add_zero_attn): its query/key/"
                             f"value width ({inner}) must stay equal to its input width ({embed})")
        sub.__class__ = ShrunkMultiheadAttention


def _fix_conv1d_hf(sub, path):  # transformers' GPT-2 Conv1D: weight (nx, nf)
    sub.nx, sub.nf = sub.weight.shape


def _fix_bert_attention(sub, path):
    sub.all_head_size = sub.query.weight.shape[0]
    sub.num_attention_heads = sub.all_head_size // sub.attention_head_size


def _fix_gpt2_attention(sub, path):
    width = sub.c_attn.weight.shape[1]
    sub.split_size = width // (2 if getattr(sub, "is_cross_attention", False) else 3)
    sub.num_heads = sub.split_size // sub.head_dim
    sub.embed_dim = sub.c_proj.weight.shape[1]


def _fix_llama_attention(sub, path):
    heads = sub.q_proj.weight.shape[0] // sub.head_dim
    kv_heads = sub.k_proj.weight.shape[0] // sub.head_dim
    if heads % kv_heads:
        raise ValueError(f"submodule {path!r} ({type(sub).__name__}): {heads} query heads left are not a multiple of "
                         f"the {kv_heads} key/value heads left (prune query heads with pools = key/value groups)")
    sub.num_heads, sub.num_key_value_heads = heads, kv_heads
    sub.num_key_value_groups = heads // kv_heads


# Types that own group members: the attributes to fix after their tensors are sliced.
_OWNERS = [
    (nn.Linear, _fix_linear),
    (nn.modules.conv._ConvNd, _fix_conv),
    (nn.modules.batchnorm._NormBase, _fix_norm),
    (nn.LayerNorm, _fix_layer_norm),
    (nn.RMSNorm, _fix_layer_norm),
    (nn.GroupNorm, _fix_group_norm),
    (nn.Embedding, _fix_embedding),
    (nn.EmbeddingBag, _fix_embedding),
    (nn.PReLU, _fix_prelu),
    (nn.MultiheadAttention, _fix_mha),
]
# transformers' modules, by class name (no import of transformers): owners of members ...
_HF_OWNERS = {"Conv1D": _fix_conv1d_hf}
_HF_OWNER_SUFFIXES = ("RMSNorm", "LayerNorm")  # LlamaRMSNorm, T5LayerNorm...: a weight, nothing to fix
# ... and parents whose head counts follow their children's shapes
_HF_PARENTS = {"BertSelfAttention": _fix_bert_attention, "BertSdpaSelfAttention": _fix_bert_attention,
               "RobertaSelfAttention": _fix_bert_attention, "GPT2Attention": _fix_gpt2_attention,
               "LlamaAttention": _fix_llama_attention, "MistralAttention": _fix_llama_attention,
               "Qwen2Attention": _fix_llama_attention}


def _fixer(sub: nn.Module):
    for kind, fix in _OWNERS:
        if isinstance(sub, kind):
            return fix
    name = type(sub).__name__
    if name in _HF_OWNERS:
        return _HF_OWNERS[name]
    if name.endswith(_HF_OWNER_SUFFIXES) and set(dict(sub.named_parameters(recurse=False))) <= {"weight", "bias"}:
        return lambda sub, path: None
    return None


# ----------------------------------------------------------------------------------------------
# Building the smaller module.

def _owners(module: nn.Module) -> Dict[str, List[Tuple[str, str]]]:
    """``{name: [(submodule path, local name), ...]}`` for every param and buffer, tied aliases
    listed under the name ``named_parameters()`` (``named_buffers()``) gives them."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for named in (module.named_parameters, module.named_buffers):
        first: Dict[int, str] = {}
        for name, t in named(remove_duplicate=False):
            path, _, local = name.rpartition(".")
            key = first.setdefault(id(t), name)
            out.setdefault(key, []).append((path, local))
    return out


def _plan(module: nn.Module, entries: List[Tuple[Group, List[int]]]):
    """``{(name, dim): kept indices}`` of every tensor a group slices, checked against the module."""
    tensors: Dict[str, torch.Tensor] = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    checked = check_groups([g for g, _ in entries], shapes, "parameters and buffers of the module", buffers=True)
    lines: Dict[Tuple[str, int], torch.Tensor] = {}
    for group, (_, kept) in zip(checked, entries):
        if len(kept) == group.channels:
            continue
        keep = torch.zeros(group.channels, dtype=torch.bool)
        keep[kept] = True
        for m in group.members:
            line = lines.setdefault((m.name, m.dim), torch.ones(shapes[m.name][m.dim], dtype=torch.bool))
            line[m.offset:m.offset + group.channels * m.unit] &= keep.repeat_interleave(m.unit)
    return {key: line.nonzero().flatten() for key, line in lines.items()}


def _build(module: nn.Module, entries: List[Tuple[Group, List[int]]], params: Optional[Dict[str, torch.Tensor]],
           masks: Dict[str, torch.Tensor]) -> nn.Module:
    plan = _plan(module, entries)
    owners = _owners(module)
    changed_paths = {path for name, _ in plan for path, _ in owners[name]}
    for path in sorted(changed_paths):  # refuse unknown owners before anything is built
        sub = module.get_submodule(path)
        if _fixer(sub) is None:
            names = sorted(name for name, _ in plan if any(p == path for p, _ in owners[name]))
            raise ValueError(f"shrink does not know how to resize submodule {path or '<root>'!r} of type "
                             f"{type(sub).__module__}.{type(sub).__qualname__}, which owns {names}; supported: "
                             f"{', '.join(k.__name__ for k, _ in _OWNERS)}, transformers' "
                             f"{', '.join(sorted(_HF_OWNERS))} and norms")
    new = copy.deepcopy(module)
    own: Dict[str, torch.Tensor] = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    params = params or {}
    touched = set(params) | set(masks) | {name for name, _ in plan}
    with torch.no_grad():
        for name in touched:
            value, mask = params.get(name, own[name]).detach(), masks.get(name)
            fresh = False
            for (tname, dim), index in plan.items():  # slice first: mask only what is kept
                if tname == name:
                    value = value.index_select(dim, index.to(value.device))
                    mask = None if mask is None else mask.index_select(dim, index.to(mask.device))
                    fresh = True
            if mask is not None:
                value, fresh = masked(value, mask), True
            value = value if fresh else value.clone()
            if isinstance(own[name], nn.Parameter):  # one Parameter for all tied aliases
                value = nn.Parameter(value, requires_grad=own[name].requires_grad)
            for path, local in owners[name]:
                sub = new.get_submodule(path)
                store: Dict[str, Any] = sub._parameters if local in sub._parameters else sub._buffers
                store[local] = value
    for path in sorted(changed_paths):
        sub = new.get_submodule(path)
        _fixer(sub)(sub, path)
    for path, sub in new.named_modules():
        fix = _HF_PARENTS.get(type(sub).__name__)
        if fix is not None and any(p == path or p.startswith(path + ".") for p in changed_paths):
            fix(sub, path)
    return new


def shrink_to(module: nn.Module, kept: Sequence[Dict[str, Any]], *, params: Optional[Tree] = None,
              masks: Optional[Tree] = None) -> nn.Module:
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
    entries = [_as_group(entry, i) for i, entry in enumerate(kept)]
    return _build(module, entries, _named(module, params, "params"), _named(module, masks, "masks"))


def _named(module: nn.Module, tree: Optional[Tree], what: str) -> Dict[str, torch.Tensor]:
    if tree is None:
        return {}
    named = _pytree.named_leaves(tree)
    known: Dict[str, torch.Tensor] = dict(module.named_parameters())
    known.update(dict(module.named_buffers()))
    unknown = [name for name in named if name not in known]
    if unknown:
        raise unknown_names(unknown, known, what, among=f"the parameters and buffers of {type(module).__name__}")
    for name, leaf in named.items():
        _pytree.check_like(name, leaf, known[name], what[:-1])
    return named


def shrink(module: nn.Module, masks: Tree, example_args: Any = (), params: Optional[Tree] = None, *,
           groups: Optional[Sequence[Group]] = None, example_kwargs: Optional[Dict[str, Any]] = None,
           check: bool = True, rtol: float = 1e-4, atol: float = 1e-5) -> nn.Module:
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
    transformers' ``Conv1D`` (``nf``/``nx``) and head counts of BERT, GPT-2 and Llama attention
    (``num_attention_heads``/``all_head_size``, ``num_heads``/``split_size``,
    ``num_key_value_groups``). A member owned by any other module type raises before anything
    is built.

    With ``check=True`` (default) the shrunk module is run on ``example_args`` in eval mode and
    compared with ``funcprune.functional_call(module, params, example_args, masks=masks)``;
    outputs that differ beyond ``rtol``/``atol`` (``atol`` scaled by the largest reference output)
    raise ``ValueError`` naming the groups whose shrink alone changes the output and by how much,
    so a silently wrong model is never returned. Groups marked inexact (a normalization across
    their channels) that the masks prune differ by design: the check then warns instead.

    Args:
      module: the model.
      masks: channel masks consistent across each group (:func:`funcprune.structural.prune_groups`).
      example_args: positional inputs for tracing (when ``groups`` is None) and the check.
      params: values to use instead of the module's own (named like ``named_parameters()``).
      groups: the groups (default: ``funcprune.structural.groups(module, example_args, example_kwargs,
        inexact=True)``; groups the masks do not prune are left as they are).
      example_kwargs: keyword inputs for tracing and the check.
      check: verify the shrunk module against the masked one.
      rtol, atol: the check's tolerances.

    Returns:
      The new module, in the module's training mode.

    Raises:
      ValueError: members of a group that disagree on the kept channels (naming them), a group
        keeping no channel, a submodule shrink cannot resize (naming it and its type), or a
        failed check (naming the groups and the difference).

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
    args = example_args if isinstance(example_args, tuple) else (example_args,)
    if groups is None:
        try:
            from . import groups as find_groups  # funcprune.structural.groups (torch.export tracing)
        except ImportError as err:
            raise ImportError("shrink needs groups=: funcprune.structural.groups is not available") from err
        try:  # inexact groups too: the masks may prune them (prune_groups(..., include_inexact=True))
            groups = find_groups(module, args, example_kwargs, inexact=True)
        except TypeError:
            groups = find_groups(module, args, example_kwargs)
    named_masks = _named(module, masks, "masks")
    named_params = _named(module, params, "params")
    kept = kept_channels(named_masks, groups)
    entries = [_as_group(entry, i) for i, entry in enumerate(kept)]
    new = _build(module, entries, named_params, named_masks)
    if check:
        _check(module, new, groups, entries, named_params, named_masks, args, example_kwargs or {}, rtol, atol)
    return new


def _modes(module: nn.Module) -> Dict[str, bool]:
    return {path: sub.training for path, sub in module.named_modules()}


def _restore(module: nn.Module, modes: Dict[str, bool]) -> None:
    for path, sub in module.named_modules():
        sub.training = modes[path]


def _leaves(out: Any) -> List[torch.Tensor]:
    if isinstance(out, dict):  # transformers' ModelOutput is an OrderedDict
        out = [v for v in out.values()]
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _difference(ref: Any, got: Any, rtol: float, atol: float) -> Optional[str]:
    """None when the outputs agree, else a description of the largest difference."""
    a, b = _leaves(ref), _leaves(got)
    if len(a) != len(b):
        return f"{len(a)} output tensors in the masked model, {len(b)} in the shrunk one"
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            return f"output {i} has shape {tuple(y.shape)}, the masked model's {tuple(x.shape)}"
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return f"output {i} (dtype {x.dtype}) differs"
            continue
        x, y = x.detach().double(), y.detach().double()
        scale = float(x.abs().max()) if x.numel() else 0.0
        if not torch.allclose(y, x, rtol=rtol, atol=atol * max(scale, 1.0), equal_nan=True):
            err = float((y - x).abs().nan_to_num(nan=math.inf).max())
            return f"output {i} differs by up to {err:.3g} (largest reference value {scale:.3g})"
    return None


def _compare(ref: Any, new: nn.Module, args, kwargs, rtol: float, atol: float) -> Optional[str]:
    try:
        out = new(*args, **kwargs)
    except Exception as err:  # a wrong shrink often fails on shapes: report it as a failed check
        return f"the shrunk model fails: {type(err).__name__}: {err}"
    return _difference(ref, out, rtol, atol)


def _without(masks: Dict[str, torch.Tensor], entries, inexact: List[int]) -> Dict[str, torch.Tensor]:
    """``masks`` with the pruned channels of the ``inexact`` entries kept again (the pruned channels of
    every other entry stay masked, also where the two cross in one tensor)."""
    lines: Dict[Tuple[str, int, bool], torch.Tensor] = {}
    for i, (g, kept) in enumerate(entries):
        if len(kept) == g.channels:
            continue
        gone = torch.ones(g.channels, dtype=torch.bool)
        gone[kept] = False
        for m in g.members:
            if m.buffer or m.name not in masks:
                continue
            key = (m.name, m.dim, i not in inexact)
            line = lines.setdefault(key, torch.zeros(masks[m.name].shape[m.dim], dtype=torch.bool))
            line[m.offset:m.offset + g.channels * m.unit] |= gone.repeat_interleave(m.unit)
    out = dict(masks)
    for exact_pass in (False, True):  # first keep the inexact channels, then re-prune the exact ones
        for (name, dim, exact), line in lines.items():
            if exact != exact_pass:
                continue
            mask = out[name]
            shape = [1] * mask.dim()
            shape[dim] = -1
            line = line.to(mask.device).view(shape)
            keep = mask if mask.dtype == torch.bool else mask != 0
            keep = (keep & ~line) if exact else (keep | line)
            out[name] = keep if mask.dtype == torch.bool else keep.to(mask.dtype)
    return out


def _check(module, new, groups, entries, params, masks, args, kwargs, rtol, atol) -> None:
    from ..call import functional_call

    inexact = [i for i, (g, (_, kept)) in enumerate(zip(groups, entries)) if not g.exact and len(kept) < g.channels]
    old_modes, new_modes = _modes(module), _modes(new)
    try:
        module.eval()
        new.eval()
        with torch.no_grad():
            params = params or dict(module.named_parameters())
            strict_masks, strict = masks, new
            if inexact:  # the exact groups are checked strictly, the inexact ones left unpruned on both sides
                strict_masks = _without(masks, entries, inexact)
                strict = _build(module, [e for i, e in enumerate(entries) if i not in inexact], params,
                                strict_masks).eval()
            ref = functional_call(module, params, args, kwargs, masks=strict_masks)
            diff = _compare(ref, strict, args, kwargs, rtol, atol)
            if diff is None:
                if inexact:
                    full = functional_call(module, params, args, kwargs, masks=masks)
                    rest = _compare(full, new, args, kwargs, rtol, atol)
                    if rest is not None:
                        warnings.warn(f"shrink: the shrunk model differs from the masked model ({rest}), as expected "
                                      f"for the inexact group(s) {inexact} it prunes (the exact groups alone match): "
                                      + "; ".join(f"{i}: {groups[i].reason or groups[i].kind}" for i in inexact),
                                      stacklevel=3)
                return
            culprits = []
            for i, (g, kept) in enumerate(entries):
                if len(kept) == g.channels or i in inexact:
                    continue
                alone = _build(module, [(g, kept)], params, strict_masks).eval()
                one = _compare(ref, alone, args, kwargs, rtol, atol)
                if one is not None:
                    culprits.append(f"{describe_group(i, g)}: {one}")
    finally:
        _restore(module, old_modes)
        _restore(new, new_modes)
    raise ValueError("shrink: the shrunk model's outputs differ from the masked model's: " + diff
                     + (f" (with the inexact group(s) {inexact} left unpruned on both sides)" if inexact else "") + ". "
                     + ("Groups whose shrink alone differs: " + "; ".join(culprits) if culprits else
                        "No single group's shrink differs alone: the groups interact")
                     + ". Pass check=False to get the module anyway.")
