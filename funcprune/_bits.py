"""Masks as bits, the one packer of both mask checkpoint formats (``export.save_masks`` and DCP).

8 entries a byte along the last dim, the first entry in the most significant bit, the last byte of
each row padded with zeros: ``numpy.packbits(mask, axis=-1)``. ``export.save_masks`` packs the
flattened mask (a 1-D "row"), DCP checkpoints every row of the mask (so a shard of the mask on any
other dim is a shard of the packed tensor).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_WEIGHTS = (7, 6, 5, 4, 3, 2, 1, 0)


def pack_last(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool (or 0/1) tensor's last dim into uint8, MSB first (``numpy.packbits(axis=-1)``).

    Example:
      >>> pack_last(torch.tensor([True, False, True, True, False, False, False, False, True]))
      tensor([176, 128], dtype=torch.uint8)
    """
    x = mask.to(torch.uint8)
    x = torch.nn.functional.pad(x, (0, (-x.shape[-1]) % 8))
    shifts = torch.tensor(_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (x.view(*x.shape[:-1], x.shape[-1] // 8, 8) << shifts).sum(dim=-1, dtype=torch.uint8)


def unpack_last(bits: torch.Tensor, last: int) -> torch.Tensor:
    """Inverse of :func:`pack_last` for a last dim of ``last`` entries (a bool tensor).

    Example:
      >>> unpack_last(torch.tensor([176, 128], dtype=torch.uint8), 9).int().tolist()
      [1, 0, 1, 1, 0, 0, 0, 0, 1]
    """
    shifts = torch.tensor(_WEIGHTS, dtype=torch.uint8, device=bits.device)
    flat = ((bits.unsqueeze(-1) >> shifts) & 1).view(*bits.shape[:-1], bits.shape[-1] * 8)
    return flat[..., :last].bool()


def packed_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The shape :func:`pack_last` gives a tensor of ``shape`` (at least 1-D)."""
    return (*shape[:-1], math.ceil(shape[-1] / 8))
