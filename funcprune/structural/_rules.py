"""The rule table for the exported graph: ATen op name -> its channel rule, open to users.

The built-in rules are in ``_op_rules.py``; :func:`register_rule` adds or replaces an entry. An op
without a rule whose inputs carry channels stops the trace with ``NotImplementedError``
(``_trace.run``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ._flow import untracked
from ._flow import where as _where
from ._op_rules import (
    barrier_on_dim,
    batch_norm,
    broadcast,
    clamp,
    conv,
    convolution,
    embedding,
    group_norm,
    index,
    layer_norm,
    linear,
    matmul,
    max_min,
    nothing,
    pool,
    reduction,
    sdpa,
    softmax,
    unary,
)
from ._shapes import SHAPE_RULES

RULES = {}
for _name in (
    "relu",
    "relu_",
    "gelu",
    "gelu_",
    "silu",
    "silu_",
    "sigmoid",
    "sigmoid_",
    "hardswish",
    "hardswish_",
    "hardsigmoid",
    "hardsigmoid_",
    "tanh",
    "tanh_",
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "reciprocal",
    "dropout",
    "dropout_",
    "feature_dropout",
    "alpha_dropout",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "to",
    "_to_copy",
    "lift_fresh_copy",
    "cos",
    "sin",
    "erf",
    "hardtanh",
    "hardtanh_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "elu",
    "elu_",
    "mish",
    "softplus",
    "square",
    "zeros_like",
    "ones_like",
    "empty_like",
    "full_like",
    "type_as",
    "float",
    "log1p",
    "expm1",
    "logical_not",
    "bitwise_not",
    "isnan",
    "nan_to_num",
    "sign",
    "round",
    "floor",
    "ceil",
    "trunc",
    "frac",
):
    RULES[_name] = unary
for _name in (
    "add",
    "add_",
    "sub",
    "sub_",
    "rsub",
    "mul",
    "mul_",
    "div",
    "div_",
    "pow",
    "where",
    "maximum",
    "minimum",
    "masked_fill",
    "masked_fill_",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "__and__",
    "__or__",
    "logical_and",
    "logical_or",
    "addcmul",
    "addcdiv",
    "lerp",
    "fmod",
    "remainder",
    "floor_divide",
    "copy_",
    "copy",
    "atan2",
    "hypot",
):
    RULES[_name] = broadcast
for _name in ("conv1d", "conv2d", "conv3d"):
    RULES[_name] = conv
RULES["convolution"] = convolution
RULES["linear"] = linear
for _name in ("mm", "bmm", "matmul", "addmm", "baddbmm"):
    RULES[_name] = matmul
RULES["embedding"] = embedding
for _name in (
    "batch_norm",
    "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "native_batch_norm",
    "instance_norm",
):
    RULES[_name] = batch_norm
RULES["layer_norm"] = layer_norm
RULES["native_layer_norm"] = layer_norm
RULES["rms_norm"] = layer_norm
RULES["group_norm"] = group_norm
RULES["native_group_norm"] = group_norm
for _name in ("softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"):
    RULES[_name] = softmax
for _name in ("clamp", "clamp_", "clamp_min", "clamp_max", "clamp_min_", "clamp_max_"):
    RULES[_name] = clamp
for _name in (
    "mean",
    "sum",
    "amax",
    "amin",
    "var",
    "std",
    "prod",
    "norm",
    "linalg_vector_norm",
    "logsumexp",
    "any",
    "all",
):
    RULES[_name] = reduction
RULES["max"] = max_min
RULES["min"] = max_min
for _name in (
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "max_pool2d_with_indices",
    "adaptive_max_pool3d",
    "max_pool3d_with_indices",
    "upsample_nearest1d",
    "upsample_nearest2d",
    "upsample_bilinear2d",
    "upsample_nearest3d",
    "pad",
    "constant_pad_nd",
):
    RULES[_name] = pool
RULES["roll"] = barrier_on_dim(2, "torch.roll")
RULES["flip"] = barrier_on_dim(1, "torch.flip")
RULES["cumsum"] = barrier_on_dim(1, "cumsum")
RULES["index_select"] = barrier_on_dim(1, "index_select")
RULES["gather"] = barrier_on_dim(1, "gather")
RULES["sort"] = barrier_on_dim(1, "ordering", default_last=True)
RULES["argsort"] = barrier_on_dim(1, "ordering", default_last=True)
RULES["topk"] = barrier_on_dim(2, "topk", default_last=True)
RULES["kthvalue"] = barrier_on_dim(2, "kthvalue", default_last=True)
RULES["index"] = index
RULES["index_put"] = index
RULES["index_put_"] = index
RULES["scaled_dot_product_attention"] = sdpa
for _name in (
    "_assert_tensor_metadata",
    "_assert_async",
    "sym_size",
    "sym_numel",
    "sym_stride",
    "_assert_scalar",
    "sym_constrain_range_for_size",
):
    RULES[_name] = nothing

RULES.update(SHAPE_RULES)  # views, cat, split, select: the layout rules
RULES = {("aten::" + name if name != "getitem" else name): rule for name, rule in RULES.items()}


def barrier(flow, node, args, kwargs):
    """An op whose meaning depends on the channel counts of its inputs: none of them may be pruned."""
    flow.pin_all([list(args), list(kwargs.values())], _where(node, "an op registered as a barrier"))
    return _untracked_like(node.meta.get("val"))


def _untracked_like(val):
    if isinstance(val, (tuple, list)):
        return [_untracked_like(v) for v in val]
    return untracked(val.shape) if hasattr(val, "shape") else None


_NAMED = {"unary": unary, "elementwise": broadcast, "barrier": barrier}


def op_key(target) -> str:
    """The key of an exported node's target (or of an op given to :func:`register_rule`) in the rule table."""
    packet = getattr(target, "overloadpacket", target)
    name = getattr(packet, "_qualified_op_name", None)
    if name is not None:
        return name
    return "getitem" if target is operator.getitem else str(target)


def register_rule(op: Any, rule: str | Callable) -> None:
    """Teach :func:`funcprune.structural.groups` how channels pass through ``op``.

    Args:
      op: the op as it appears in the exported graph: ``torch.ops.<namespace>.<name>`` (an
        ``OpOverloadPacket``, every overload), one of its overloads, or its qualified name
        (``"mylib::scale_channels"``).
      rule: ``"unary"`` (the output has the first input's shape and channels), ``"elementwise"``
        (broadcasting inputs: dims of equal size hold the same channels, which are joined into one
        group; a channel dim broadcast over many entries is a barrier), ``"barrier"`` (no channel
        of any input may be pruned; the output carries none), or a callable
        ``rule(flow, node, args, kwargs)`` written like the built-in rules of
        ``funcprune/structural/_op_rules.py`` (it returns the output's state). A later registration of
        the same op replaces the earlier one, built-in rules included.

    Raises:
      TypeError: ``op`` is not an op or a qualified name, or ``rule`` is neither a known name nor callable.
    """
    if isinstance(rule, str):
        if rule not in _NAMED:
            raise TypeError(f"register_rule: rule must be one of {sorted(_NAMED)} or a callable, got {rule!r}")
        rule = _NAMED[rule]
    elif not callable(rule):
        raise TypeError(f"register_rule: rule must be one of {sorted(_NAMED)} or a callable, got {type(rule).__name__}")
    if isinstance(op, str):
        if "::" not in op:
            raise TypeError(f"register_rule: a qualified op name is 'namespace::name', got {op!r}")
        key = op
    elif hasattr(getattr(op, "overloadpacket", op), "_qualified_op_name"):
        key = op_key(op)
    else:
        raise TypeError(
            f"register_rule: op must be torch.ops.<namespace>.<name> (or an overload, or its qualified "
            f"name), got {type(op).__name__}"
        )
    RULES[key] = rule


__all__: list[str] = ["RULES", "op_key", "register_rule"]
