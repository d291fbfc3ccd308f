"""How ``shrink`` rewrites a module's attributes after its tensors are sliced: the resizer table.

A resizer is ``resizer(module, path)``: called on the new (shrunk) module after every tensor it owns has
its new shape, it sets the attributes that follow the shapes (``in_features``, ``num_heads``...) or
raises ``ValueError`` naming ``path`` where no consistent setting exists. ``shrink`` calls it for every
module of a registered type that owns a sliced tensor or has one below it (so an attention module
sees its projections' new widths), deepest first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ShrunkMultiheadAttention", "register_resizer", "resizer_for"]

Resizer = Callable[[nn.Module, str], None]
_BY_TYPE: dict[type, Resizer] = {}
_BY_NAME: dict[str, Resizer] = {}
_NORM_SUFFIXES = ("RMSNorm", "LayerNorm")  # LlamaRMSNorm, T5LayerNorm...: a weight (and bias) and a width


def register_resizer(module_type: type | str, resizer: Resizer) -> None:
    """Teach :func:`funcprune.structural.shrink` how to resize modules of ``module_type``.

    Args:
      module_type: a module class (its subclasses match too, the most specific registration wins), or a
        class name (``"BertSelfAttention"``: matches a class of that name anywhere in the MRO, for
        libraries shrink does not import).
      resizer: ``resizer(module, path)``, called on the shrunk copy after the tensors it owns (and those of
        its submodules) have their new shapes: set the attributes that follow them, or raise
        ``ValueError`` naming ``path``. A module whose forward reads every width from its tensors needs
        ``lambda module, path: None``. A later registration of the same type replaces the earlier one.

    Raises:
      TypeError: ``module_type`` is neither an ``nn.Module`` subclass nor a str, or ``resizer`` is not callable.
    """
    if not callable(resizer):
        raise TypeError(f"register_resizer: resizer must be callable(module, path), got {type(resizer).__name__}")
    if isinstance(module_type, str) and module_type:
        _BY_NAME[module_type] = resizer
    elif isinstance(module_type, type) and issubclass(module_type, nn.Module):
        _BY_TYPE[module_type] = resizer
    else:
        raise TypeError(
            f"register_resizer: module_type must be an nn.Module subclass or a class name, got {module_type!r}"
        )


def resizer_for(module: nn.Module) -> Resizer | None:
    """The registered resizer of ``module``'s type (most specific first), else None."""
    for cls in type(module).__mro__:
        if cls in _BY_TYPE:
            return _BY_TYPE[cls]
        if cls.__name__ in _BY_NAME:
            return _BY_NAME[cls.__name__]
    name = type(module).__name__
    if name.endswith(_NORM_SUFFIXES) and set(dict(module.named_parameters(recurse=False))) <= {"weight", "bias"}:
        return _fix_named_norm
    return None


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
            raise ValueError(
                f"submodule {path!r} ({type(sub).__name__}, groups={groups}): {a} channels left on dim 0 "
                f"is not a multiple of the {per} per conv group"
            )
        groups = a // per
    elif a % groups:
        raise ValueError(
            f"submodule {path!r} ({type(sub).__name__}, groups={groups}): {a} channels left on dim 0 "
            f"are not divisible by groups={groups} (a grouped conv prunes an equal count per group)"
        )
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
        raise ValueError(
            f"submodule {path!r} ({type(sub).__name__}) has no affine weight to read its new normalized_shape from"
        )
    sub.normalized_shape = tuple(sub.weight.shape)


def _fix_group_norm(sub, path):
    sub.num_channels = sub.weight.shape[0]
    if sub.num_channels % sub.num_groups:
        raise ValueError(
            f"submodule {path!r} (GroupNorm, num_groups={sub.num_groups}): {sub.num_channels} channels "
            "left are not divisible by num_groups"
        )


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

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
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
        scores = (q * head_dim**-0.5) @ k.transpose(-2, -1)  # (batch, heads, length, source)
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
        raise ValueError(
            f"submodule {path!r} (nn.MultiheadAttention): width {inner} is neither whole heads of "
            f"{head_dim} nor {sub.num_heads} heads of equal size"
        )
    sub.embed_dim = embed
    if inner != embed or sub.out_proj.weight.shape[0] != embed:
        if sub.bias_k is not None or sub.add_zero_attn:
            raise ValueError(
                f"submodule {path!r} (nn.MultiheadAttention with bias_k/add_zero_attn): its query/key/"
                f"value width ({inner}) must stay equal to its input width ({embed})"
            )
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
        raise ValueError(
            f"submodule {path!r} ({type(sub).__name__}): {heads} query heads left are not a multiple of "
            f"the {kv_heads} key/value heads left (prune query heads with pools = key/value groups)"
        )
    sub.num_heads, sub.num_key_value_heads = heads, kv_heads
    sub.num_key_value_groups = heads // kv_heads


def _fix_named_norm(sub, path):
    """A norm matched by its class name (LlamaRMSNorm, T5LayerNorm...): a ``normalized_shape`` follows its weight."""
    shape = getattr(sub, "normalized_shape", None)
    if isinstance(shape, (int, tuple, list, torch.Size)) and getattr(sub, "weight", None) is not None:
        sub.normalized_shape = sub.weight.shape[0] if isinstance(shape, int) else tuple(sub.weight.shape)


def _fix_swin_attention(sub, path):
    sub.num_attention_heads = sub.q_proj.weight.shape[0] // sub.head_dim


def _fix_t5_attention(sub, path):
    sub.inner_dim = sub.q.weight.shape[0]
    sub.n_heads = sub.inner_dim // sub.key_value_proj_dim


for _type, _fix in [
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
]:
    register_resizer(_type, _fix)
# transformers' modules, by class name (no import of transformers)
for _name, _fix in [
    ("Conv1D", _fix_conv1d_hf),
    ("SwinRelativePositionBias", lambda sub, path: None),
    ("BertSelfAttention", _fix_bert_attention),
    ("BertSdpaSelfAttention", _fix_bert_attention),
    ("RobertaSelfAttention", _fix_bert_attention),
    ("GPT2Attention", _fix_gpt2_attention),
    ("LlamaAttention", _fix_llama_attention),
    ("MistralAttention", _fix_llama_attention),
    ("Qwen2Attention", _fix_llama_attention),
    ("T5Attention", _fix_t5_attention),
    ("SwinAttention", _fix_swin_attention),
]:
    register_resizer(_name, _fix)
