"""torch's channel norms (``torch.nn.utils.prune``'s ``_compute_norm``), for the structured methods.

Below both :mod:`funcprune.methods` (one-process ``ln_structured``) and :mod:`funcprune._sharded_channels`
(which checks ``n`` and the norm dtype against it), so neither imports the other for it.
"""

from __future__ import annotations

import torch
import torch.nn.utils.prune as _torch_prune

__all__ = ["channel_norm"]


def channel_norm(t: torch.Tensor, n, dim: int) -> torch.Tensor:
    """L``n`` norm of every slice of ``t`` along ``dim``, as ``torch.nn.utils.prune`` computes it.

    It is the running torch's own ``_compute_norm``, so channel scores, and which ``n`` are
    accepted, follow the installed torch bit for bit (torch 2.14 changed how ``'fro'`` and
    ``'nuc'`` are read: ``'fro'`` over 3 dims, a conv weight's channels, raises on 2.13 and is the
    2-norm on 2.14); should a torch release drop that helper, torch 2.14's rule.

    Args:
      t: the tensor (at least 1-D).
      n: a norm order (``p`` of :func:`torch.norm`: a number, ``inf``, ``'fro'``, ``'nuc'``).
      dim: the dim along which the channels lie.

    Returns:
      The norms, one per channel (a 1-D tensor of ``t.shape[dim]`` entries).

    Example:
      >>> channel_norm(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), 2, 0)
      tensor([5., 1.])
    """
    compute = getattr(_torch_prune, "_compute_norm", _channel_norm_2_14)
    return compute(t, n, dim)


def _channel_norm_2_14(t: torch.Tensor, n, dim: int) -> torch.Tensor:
    """torch 2.14's ``_compute_norm``: matrix norms for ``'nuc'`` (and ``'fro'`` over two dims), else vector norms."""
    dims = [d for d in range(t.dim()) if d != dim % t.dim()]
    if n == "nuc" or (n == "fro" and len(dims) == 2):
        return torch.linalg.matrix_norm(t, ord=n, dim=dims if len(dims) == 2 else (-2, -1))
    return torch.linalg.vector_norm(t, ord=2 if n == "fro" else n, dim=dims)
