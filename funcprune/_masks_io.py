"""Mask checkpoints: masks saved on their own, one bit per entry, independent of the model.

Format (version 1): a file written by ``torch.save`` holding the dict::

    {"format": "funcprune.masks", "version": 1,
     "masks": {qualified name: {"shape": [int, ...], "bits": uint8 1-D tensor}, ...}}

``bits`` is the mask flattened in row-major order (``reshape(-1)``), padded with ``False`` to a
multiple of 8, and packed 8 entries per byte with the first entry in the most significant bit --
exactly ``numpy.packbits(mask.ravel())``. A saved mask therefore costs ``ceil(numel / 8)`` bytes
plus its name and shape, the file loads with ``torch.load(..., weights_only=True)``, and loading
restores every name, shape and bit exactly (masks come back as ``torch.bool``). Re-exported by
:mod:`funcprune.export`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from . import _amount, _pytree
from ._pytree import Tree

FORMAT, VERSION = "funcprune.masks", 1
_WEIGHTS = (7, 6, 5, 4, 3, 2, 1, 0)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.reshape(-1).to(device="cpu", dtype=torch.uint8)
    flat = torch.nn.functional.pad(flat, (0, (-flat.numel()) % 8))
    shifts = torch.tensor(_WEIGHTS, dtype=torch.uint8)
    return (flat.view(-1, 8) << shifts).sum(dim=1, dtype=torch.uint8)


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    shifts = torch.tensor(_WEIGHTS, dtype=torch.uint8)
    flat = ((bits.view(-1, 1) >> shifts) & 1).reshape(-1).bool()
    return flat[:math.prod(shape)].view(shape)


def save_masks(masks: Tree, f: Any) -> None:
    """Write ``masks`` to ``f`` (a path or a binary file) in the version-1 mask checkpoint format.

    Args:
      masks: a masks tree (bool, or 0/1 of any dtype; ``True``/nonzero = kept).
      f: a file name or a writable binary file object, as for ``torch.save``.

    Raises:
      ValueError: a mask holding values other than 0 and 1 (it would not round-trip), or a mask
        on the ``meta`` device (it has no values to save).

    Example:
      >>> import io
      >>> buffer = io.BytesIO()
      >>> save_masks({"fc.weight": torch.tensor([[True, False], [False, True]])}, buffer)
      >>> _ = buffer.seek(0)
      >>> load_masks(buffer)
      {'fc.weight': tensor([[ True, False],
              [False,  True]])}
    """
    packed = {}
    for name, mask in _pytree.named_leaves(masks).items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}: a mask must be a tensor, got {type(mask).__name__}")
        if not _amount._is_concrete(mask):
            raise ValueError(f"{name}: cannot save a mask without values (device {mask.device})")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name}: mask values must be 0 or 1 to round-trip as bits")
        packed[name] = {"shape": list(mask.shape), "bits": _pack(mask != 0)}
    torch.save({"format": FORMAT, "version": VERSION, "masks": packed}, f)


def load_masks(f: Any, *, like: Optional[Tree] = None, device: Any = "cpu") -> Tree:
    """Read masks written by :func:`save_masks`.

    Args:
      f: a file name or a readable binary file object.
      like: optional params tree; the masks come back in its structure (dicts omit unmasked
        names), and every name and shape is checked against it.
      device: where the bool masks are put.

    Returns:
      ``{qualified name: bool mask}``, or a tree shaped like ``like``.

    Raises:
      ValueError: not a mask checkpoint, an unknown version, or bits that do not fit a shape.
      KeyError/ValueError: with ``like``, a name it lacks or a shape that differs.
    """
    data = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a funcprune mask checkpoint (expected format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"unsupported mask checkpoint version {data.get('version')!r} (this reads {VERSION})")
    masks = {}
    for name, entry in data["masks"].items():
        shape, bits = tuple(entry["shape"]), entry["bits"]
        if bits.dtype != torch.uint8 or bits.dim() != 1 or bits.numel() != math.ceil(math.prod(shape) / 8):
            raise ValueError(f"{name}: {bits.numel()} bytes of bits do not fit shape {shape}")
        masks[name] = _unpack(bits, shape).to(device)
    if like is None:
        return masks
    named = _pytree.named_leaves(like)
    _pytree.lookup(named, masks, "checkpoint")
    for name, mask in masks.items():
        if mask.shape != named[name].shape:
            raise ValueError(f"{name}: checkpoint mask has shape {tuple(mask.shape)} but the param has shape "
                             f"{tuple(named[name].shape)}")
    return _pytree.like(like, masks)
