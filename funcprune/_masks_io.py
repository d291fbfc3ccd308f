"""Mask checkpoints: masks saved on their own, one bit per entry, independent of the model.

Format (version 2): a file written by ``torch.save`` holding the dict::

    {"format": "funcprune.masks", "version": 2, "crc32": int,
     "masks": {qualified name: {"shape": [int, ...], "bits": uint8 1-D tensor, "crc32": int}, ...}}

``bits`` is the mask flattened in row-major order (``reshape(-1)``), padded with ``False`` to a
multiple of 8, and packed 8 entries per byte with the first entry in the most significant bit --
exactly ``numpy.packbits(mask.ravel())``. A leaf's ``crc32`` is ``zlib.crc32`` of its header
``json.dumps([name, shape])`` (UTF-8, compact separators) followed by the ``bits`` bytes; the
top-level ``crc32`` is ``zlib.crc32`` of ``json.dumps([[name, leaf crc32], ...])`` in file order,
so a changed bit, shape or name, and a lost or added leaf, are all detected on load (``torch.load``
does not check the zip archive's own CRCs). A saved mask therefore costs ``ceil(numel / 8)`` bytes
plus its name, shape and checksum, the file loads with ``torch.load(..., weights_only=True)``, and
loading restores every name, shape and bit exactly (masks come back as ``torch.bool``).

Version 1 (funcprune 0.1) is the same without the ``crc32`` entries; it still loads, unchecked.
funcprune 0.1 cannot read version 2. Re-exported by :mod:`funcprune.export`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zlib
from typing import Any

import torch

from . import _amount, _pytree
from ._bits import pack_last, unpack_last
from ._errors import shape_mismatch
from ._pytree import Tree

FORMAT, VERSION = "funcprune.masks", 2
READS = (1, 2)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    """The mask flattened row-major and packed: ``numpy.packbits(mask.ravel())``, on the CPU."""
    return pack_last(mask.reshape(-1).to(device="cpu"))


def _unpack(bits: torch.Tensor, shape) -> torch.Tensor:
    return unpack_last(bits.view(-1), math.prod(shape)).view(shape)


def _crc(name: str, shape: list, bits: torch.Tensor) -> int:
    """``zlib.crc32`` of the leaf's header and packed bytes (CPU uint8 1-D ``bits``)."""
    header = json.dumps([name, shape], separators=(",", ":")).encode("utf-8")
    # numpy's buffer of the bytes in place (bytes(storage) is a Python-level loop over every byte).
    # an ndarray is a buffer; numpy's stubs declare it on Python 3.12+ only
    return zlib.crc32(bits.contiguous().numpy(), zlib.crc32(header))  # type: ignore[arg-type]


def _total_crc(leaf_crcs: list) -> int:
    return zlib.crc32(json.dumps(leaf_crcs, separators=(",", ":")).encode("utf-8"))


def save_masks(masks: Tree, f: Any) -> None:
    """Write ``masks`` to ``f`` (a path or a binary file) in the version-2 mask checkpoint format.

    Args:
      masks: a masks tree (bool, or 0/1 of any dtype; ``True``/nonzero = kept).
      f: a file name or a writable binary file object, as for ``torch.save``.

    Raises:
      TypeError: a leaf that is not a tensor, or a DTensor (sharded masks are saved with
        :func:`funcprune.distributed.save_masks_dcp`, a collective that DCP can reshard).
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
    packed, crcs = {}, []
    named = _pytree.named_leaves(masks)
    _refuse_dtensors(named, "save_masks", "save_masks_dcp")
    for name, mask in named.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{name}: a mask must be a tensor, got {type(mask).__name__}")
        if not _amount.is_concrete(mask):
            raise ValueError(f"{name}: cannot save a mask without values (device {mask.device})")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name}: mask values must be 0 or 1 to round-trip as bits")
        shape, bits = list(mask.shape), _pack(mask != 0)
        crc = _crc(name, shape, bits)
        packed[name] = {"shape": shape, "bits": bits, "crc32": crc}
        crcs.append([name, crc])
    torch.save({"format": FORMAT, "version": VERSION, "crc32": _total_crc(crcs), "masks": packed}, f)


def _refuse_dtensors(named: dict, here: str, there: str) -> None:
    """TypeError for a DTensor leaf: sharded masks go through DCP (a collective), not one file."""
    from ._dtensor import is_dtensor

    sharded = [name for name, leaf in named.items() if is_dtensor(leaf)]
    if sharded:
        raise TypeError(
            f"{sharded[0]}: {here} writes one file from one process and cannot take a DTensor; "
            f"save or load sharded masks with funcprune.distributed.{there} (torch.distributed."
            f"checkpoint, every rank calls it, reshardable), or convert with .full_tensor() first"
        )


def _source(f: Any) -> str:
    """How error messages name ``f``: the path, a file object's name, or its type."""
    if isinstance(f, (str, bytes, os.PathLike)):
        return repr(os.fsdecode(f))
    name = getattr(f, "name", None)
    return repr(name) if isinstance(name, (str, bytes)) else f"<{type(f).__name__}>"


def _read(f: Any, source: str) -> Any:
    """``torch.load`` of ``f``: an unreadable, empty or truncated file raises ValueError naming it."""
    if isinstance(f, (str, bytes, os.PathLike)):
        with open(f, "rb") as handle:  # a missing or unreadable path keeps its OSError
            return _read(handle, source)
    with warnings.catch_warnings(record=True) as caught:  # corrupt pickles warn before failing
        warnings.simplefilter("always")
        try:
            data = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises EOFError, RuntimeError, UnpicklingError, KeyError, ...
            if isinstance(err, EOFError):
                why = "the file is empty or ends early"
            else:  # (torch's weights-only advice to load unsafely does not apply to a damaged file)
                detail = (
                    ""
                    if isinstance(err, pickle.UnpicklingError)
                    else ": " + (str(err).strip().splitlines() or [""])[0][:200]
                )
                why = f"the file is corrupt, truncated or of another kind ({type(err).__name__}{detail})"
            raise ValueError(f"{source}: not a readable mask checkpoint: {why}") from err
    for w in caught:  # a file that loads keeps torch's warnings
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return data


def _entry(source: str, name: Any, entry: Any, version: int) -> torch.Tensor:
    """The checked bool mask of one leaf, or ValueError naming the file and the leaf."""
    where = f"{source}: leaf {name!r}"
    if not isinstance(name, str) or not isinstance(entry, dict):
        raise ValueError(f"{where}: corrupt entry (expected a name and a dict, got {type(entry).__name__})")
    shape, bits, crc = entry.get("shape"), entry.get("bits"), entry.get("crc32")
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"{where}: corrupt shape {shape!r}")
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.uint8 or bits.dim() != 1:
        raise ValueError(f"{where}: corrupt bits (expected a 1-D uint8 tensor)")
    if bits.numel() != math.ceil(math.prod(shape) / 8):
        raise ValueError(f"{where}: {bits.numel()} bytes of bits do not fit shape {list(shape)}")
    if crc is None and version >= 2:
        raise ValueError(f"{where}: the checksum is missing")
    if crc is not None:
        if type(crc) is not int:
            raise ValueError(f"{where}: corrupt checksum {crc!r}")
        actual = _crc(name, list(shape), bits)
        if actual != crc:
            raise ValueError(
                f"{where}: checksum mismatch (stored {crc:#010x}, computed {actual:#010x}): the file is corrupt"
            )
    return _unpack(bits, tuple(shape))


def load_masks(f: Any, *, like: Tree | None = None, device: Any = "cpu") -> Tree:
    """Read masks written by :func:`save_masks` (format version 2, or 1 without checksums).

    Every leaf's checksum is checked (format version 2), so a corrupt file raises instead of
    loading a wrong mask.

    Args:
      f: a file name or a readable binary file object.
      like: optional params tree; the masks come back in its structure (dicts omit unmasked
        names), and every name and shape is checked against it.
      device: where the bool masks are put.

    Returns:
      ``{qualified name: bool mask}``, or a tree shaped like ``like``.

    Raises:
      ValueError: naming the file (and the leaf where known): an empty, truncated or corrupt file
        (a checksum that does not match, bits that do not fit a shape), not a mask checkpoint, or
        an unknown version.
      OSError: a path that cannot be opened (e.g. ``FileNotFoundError``).
      KeyError/ValueError: with ``like``, a name it lacks or a shape that differs.
      TypeError: ``like`` holds DTensors (load sharded masks with
        :func:`funcprune.distributed.load_masks_dcp`).

    Example:
      >>> import io
      >>> buffer = io.BytesIO()
      >>> save_masks({"w": torch.tensor([True, False])}, buffer)
      >>> load_masks(io.BytesIO(buffer.getvalue()[:100]))  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: <BytesIO>: not a readable mask checkpoint: the file is corrupt, truncated or of another kind ...
    """
    if like is not None:
        _refuse_dtensors(_pytree.named_leaves(like), "load_masks", "load_masks_dcp")
    source = _source(f)
    data = _read(f, source)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source}: not a funcprune mask checkpoint (expected format {FORMAT!r})")
    version = data.get("version")
    if type(version) is not int or version not in READS:
        raise ValueError(
            f"{source}: unsupported mask checkpoint version {version!r} (this reads {', '.join(map(str, READS))})"
        )
    entries = data.get("masks")
    if not isinstance(entries, dict):
        raise ValueError(f"{source}: corrupt mask checkpoint (no 'masks' dict)")
    masks = {name: _entry(source, name, entry, version) for name, entry in entries.items()}
    total = data.get("crc32")
    if total is None and version >= 2:
        raise ValueError(f"{source}: the checkpoint's checksum is missing")
    if total is not None:
        actual = _total_crc([[name, entry.get("crc32")] for name, entry in entries.items()])
        if total != actual:
            raise ValueError(
                f"{source}: checksum mismatch over the leaves (stored {total!r}, computed "
                f"{actual:#010x}): a leaf is missing, added or renamed; the file is corrupt"
            )
    masks = {name: mask.to(device) for name, mask in masks.items()}
    if like is None:
        return masks
    named = _pytree.named_leaves(like)
    _pytree.lookup(named, masks, "checkpoint")
    for name, mask in masks.items():
        if mask.shape != named[name].shape:
            raise shape_mismatch(
                "checkpoint mask", mask.shape, "the param", named[name].shape, name=f"{source}: {name}"
            )
    return _pytree.like(like, masks)
