"""The masked product ``value * mask`` in the value's dtype, with a lean backward; zeroed params for export."""

from __future__ import annotations

import torch

from . import _pytree
from ._amount import is_concrete
from ._backend import as_keep


def masked(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``value`` with pruned entries zeroed, in ``value``'s dtype: ``value * mask.to(value.dtype)``.

    Differentiable in ``value`` and, for a float mask, in ``mask`` too (its gradient is the one of
    ``value * mask.to(value.dtype)``, in the mask's dtype, eagerly and under ``torch.func`` alike).
    """
    if mask.dtype == torch.bool:
        # bool -> uint8 is a free reinterpretation and uint8 -> float a fast vectorized cast, while
        # bool -> float and a mixed bool multiply are ~5x slower; float * float is the fastest product.
        mask = mask.view(torch.uint8)
    if mask.dtype != value.dtype and is_concrete(value):
        # The cast is a fresh tensor (batched too, under vmap over masks): multiply into it rather
        # than allocate a second full-size one. Not for wrapped values (grad, stacked params).
        if not value.requires_grad:
            return mask.to(value.dtype).mul_(value)
        if is_concrete(mask) and not mask.requires_grad:  # a learnable float mask takes autograd's product
            return _MaskProduct.apply(value, mask)
    return value * mask.to(value.dtype)


class _MaskProduct(torch.autograd.Function):
    """``value * mask`` under plain autograd, keeping the integer mask for backward, not a float copy.

    ``value * mask.to(value.dtype)`` would allocate the cast, the product, and keep the cast alive
    until backward (4 bytes per entry for float32); this allocates only the product and keeps the
    1-byte mask. Only for eager tensors and a mask that needs no gradient (``backward`` returns
    none for it): torch.func transforms and learnable masks take the plain product.
    """

    @staticmethod
    def forward(value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(value.dtype).mul_(value)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.value, ctx.mask = inputs  # forward-mode AD (jvp) has no saved tensors

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return mask.to(grad.dtype).mul_(grad), None

    @staticmethod
    def jvp(ctx, value_tangent, mask_tangent):
        # A dual mask (forward-mode AD) needs no grad, so it comes here too: its tangent counts.
        out = (
            torch.zeros_like(ctx.value)
            if value_tangent is None
            else ctx.mask.to(value_tangent.dtype).mul_(value_tangent)
        )
        if mask_tangent is not None:
            out += mask_tangent.to(out.dtype) * ctx.value
        return out


def zeroed(params: _pytree.Tree, masks: _pytree.Tree | None) -> dict[str, torch.Tensor]:
    """Named detached leaves of the masked params with every pruned entry exactly zero.

    ``apply_masks`` multiplies, so a pruned NaN or inf stays NaN (``nan * 0``); the exported and
    finalized forms store nothing there, i.e. zero, so they are built with ``torch.where``. Kept
    entries are ``apply_masks``'s (the value, times the mask's value for a float mask).
    """
    named = _pytree.named_leaves(params)
    named_masks = _pytree.lookup(named, masks, "masks")
    out = {}
    for name, leaf in named.items():
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name}: a param must be a tensor, got {type(leaf).__name__}")
        value = leaf.detach()
        if name in named_masks:
            mask = named_masks[name]
            if isinstance(mask, torch.Tensor) and mask.shape != value.shape:
                raise ValueError(
                    f"{name}: mask has shape {tuple(mask.shape)} but the param has shape {tuple(value.shape)}"
                )
            keep = as_keep(value, mask, f"{name} mask")
            kept = value if mask.dtype == torch.bool else masked(value, mask.to(value.device))
            value = torch.where(keep, kept, torch.zeros((), dtype=value.dtype, device=value.device))
        out[name] = value
    return out
