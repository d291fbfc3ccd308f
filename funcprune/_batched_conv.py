"""A ``conv2d`` whose ``vmap`` rule picks the fastest form for K stacked weights (CPU).

Under ``vmap`` over stacked masks, every conv sees K weights. torch's own batching rule turns
that into one grouped convolution (``groups=K``) after copying the input into the grouped
layout; oneDNN runs grouped convolutions much slower than K plain ones on CPU. The rule here:

* shared input, stacked weights: one plain conv with the K weights concatenated along the output
  channels (``K * C_out``), no copy of the input, output batched along dim 1;
* stacked input and weights on CPU: K plain convs, stacked; on other devices: torch's grouped form;
* stacked input, shared weights: the K inputs folded into the batch dim (torch's own rule).

:class:`routed` is a ``TorchFunctionMode`` that sends ``F.conv2d`` calls to this function while
it is active; the gradients are the convolution's own (``aten.convolution_backward``).
"""

from __future__ import annotations

from typing import Any, overload

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS = (None, None, None, 1, 0, 1, 1)


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _take(t: torch.Tensor | None, dim: int | None, k: int) -> torch.Tensor | None:
    return t if t is None or dim is None else t.select(dim, k)


@overload
def _front(t: None, dim: int | None, size: int) -> None: ...
@overload
def _front(t: torch.Tensor, dim: int | None, size: int) -> torch.Tensor: ...
@overload
def _front(t: torch.Tensor | None, dim: int | None, size: int) -> torch.Tensor | None: ...
def _front(t: torch.Tensor | None, dim: int | None, size: int) -> torch.Tensor | None:
    """``t`` with its batch dim first (expanded to ``size`` when it has none)."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.stride, ctx.padding, ctx.dilation, ctx.groups = inputs
        ctx.save_for_backward(x, weight)
        ctx.bias_shape = None if bias is None else list(bias.shape)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            ctx.bias_shape,
            list(_pair(ctx.stride)),
            list(_pair(ctx.padding)),
            list(_pair(ctx.dilation)),
            False,
            [0, 0],
            ctx.groups,
            mask,
        )
        return gx, gw, gb, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, stride, padding, dilation, groups):
        size = info.batch_size
        x_dim, w_dim, b_dim = in_dims[:3]
        if w_dim is None and b_dim is None:  # only the input is stacked: fold K into the batch
            x = x.movedim(x_dim, 0)
            out = _Conv2d.apply(x.flatten(0, 1), weight, bias, stride, padding, dilation, groups)
            return out.unflatten(0, (size, x.shape[1])), 0
        weight, bias = _front(weight, w_dim, size), _front(bias, b_dim, size)
        if x_dim is None and groups == 1:  # one conv with K * C_out output channels
            out = _Conv2d.apply(
                x, weight.flatten(0, 1), None if bias is None else bias.flatten(), stride, padding, dilation, groups
            )
            return out.unflatten(1, (size, weight.shape[1])), 1
        if x.device.type != "cpu":  # torch's grouped form
            x = _front(x, x_dim, size).movedim(0, 1).flatten(1, 2)
            out = _Conv2d.apply(
                x,
                weight.flatten(0, 1),
                None if bias is None else bias.flatten(),
                stride,
                padding,
                dilation,
                groups * size,
            )
            return out.unflatten(1, (size, weight.shape[1])), 1
        outs = [
            _Conv2d.apply(
                _take(x, x_dim, k), weight[k], None if bias is None else bias[k], stride, padding, dilation, groups
            )
            for k in range(size)
        ]
        return torch.stack(outs), 0


class routed(TorchFunctionMode):
    """While active, ``F.conv2d`` / ``torch.conv2d`` calls with numeric padding go to :class:`_Conv2d`.

    Calls with ``padding="same"`` / ``"valid"`` keep torch's own conv (and batching rule).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.conv2d or func is torch.conv2d:
            bound: dict[str, Any] = dict(zip(_CONV_ARGS, _DEFAULTS))
            bound.update(zip(_CONV_ARGS, args))
            bound.update(kwargs)
            if not isinstance(bound["padding"], str):
                x = bound["input"]
                if x.dim() == 3:  # an unbatched image: the rule works on (N, C, H, W)
                    bound["input"] = x.unsqueeze(0)
                    return _Conv2d.apply(*(bound[name] for name in _CONV_ARGS)).squeeze(0)
                return _Conv2d.apply(*(bound[name] for name in _CONV_ARGS))
        return func(*args, **kwargs)
