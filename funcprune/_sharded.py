"""Gather-free global selection over tensors that may be DTensor shards.

One code path serves DTensors and plain tensors (a plain tensor is a one-process "shard" of
itself), so a one-process run reproduces a distributed mask bit for bit. Unstructured (L1,
random, given scores): the radix cut of :mod:`funcprune._radix` over the local shards, each pass's
64K-bin histogram summed across the mesh (``all_reduce``); ties at the cut go to the lowest global
flat index (leaf order, then row-major in the full tensor), by a second radix selection over the
tied entries' global indices. Replicas (``Replicate`` mesh dims) count once. Random keys come from
the hash stream (:mod:`funcprune._hashstream`); per-channel statistics live in
:mod:`funcprune._sharded_channels`.

Eager only: collectives, and Python ints read from count tensors.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

import torch

from . import _amount, _dtensor, _radix
from ._amount import Amount
from ._hashstream import draw_seed, hash_keys

__all__ = ["call_fingerprint", "agreed_alive", "select_global"]


class _Shards:
    """Local views of some leaves (DTensors on one mesh, or plain tensors) and their global bookkeeping."""

    def __init__(self, leaves: Sequence[torch.Tensor], keeps: Sequence[torch.Tensor | None]) -> None:
        for i, t in enumerate(list(leaves) + [k for k in keeps if k is not None]):  # backstop: callers check first
            if _dtensor.is_dtensor(t):
                _dtensor.check_placements(f"leaf {i}", t)
        self.leaves = list(leaves)
        self.locals = [_dtensor.local(t).detach() for t in leaves]
        self.keeps = [None if k is None else _dtensor.local(k) for k in keeps]
        self.counted = [_dtensor.counts_here(t) for t in leaves]
        self.reduce = _dtensor.mesh_sum(_dtensor.mesh_of(leaves))
        self.bases, base = [], 0
        for t in leaves:
            self.bases.append(base)
            base += _dtensor.numel(t)
        self.total = base

    def index(self, leaf: int, start: int, count: int) -> torch.Tensor:
        """Global flat indices (across the leaves, in order) of local entries of leaf ``leaf``."""
        return _dtensor.global_index(self.leaves[leaf], start, count, self.bases[leaf])

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed across the mesh (unchanged for plain tensors)."""
        return values if self.reduce is None else self.reduce(values)

    def alive(self) -> int:
        """Surviving entries over all leaves (every entry counted once across the mesh)."""
        device = self.locals[0].device
        here = torch.zeros((), dtype=torch.int64, device=device)
        for t, keep, counted in zip(self.locals, self.keeps, self.counted):
            if counted:
                here += t.numel() if keep is None else keep.sum()
        return int(self.sum(here.reshape(1))[0])

    def wrap(self, local_masks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Local masks as masks laid out like the leaves."""
        return [_dtensor.like_param(m, t) for m, t in zip(local_masks, self.leaves)]


def call_fingerprint(
    names: Sequence[str],
    leaves: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor | None],
    amount: Amount,
    method: str,
) -> dict[str, str]:
    """What every rank of one global selection must agree on, part by part (each part a short string)."""
    value = float(amount) if isinstance(amount, torch.Tensor) else amount
    return {
        "amount": f"{value!r} ({type(amount).__name__})",
        "method": method,
        "leaf names": repr(list(names)),
        "shapes": repr([tuple(t.shape) for t in leaves]),
        "dtypes": repr([str(t.dtype).replace("torch.", "") for t in leaves]),
        "prior masks": repr([name for name, keep in zip(names, keeps) if keep is not None]),
    }


def _hash62(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little") >> 2


def agreed_alive(shards: _Shards, fingerprint: dict[str, str], amount: Amount) -> int:
    """:meth:`_Shards.alive`, checking on the way that every rank of the mesh made the same call.

    The survivors' count and the fingerprint travel in one ``all_reduce`` (max) of a small int64
    vector: every part's hash and its negation (equal on every rank iff max(h) == -max(-h)), the
    amount's float64 bits likewise (for the message's range), and each rank's count in its own slot
    (summed afterwards). It is the selection's first collective and does not depend on the dtypes,
    so ranks that disagree (another amount, tree, dtype, prior masks) all raise here instead of
    desynchronizing the histogram passes.

    Raises:
      ValueError: on every rank, naming the parts that differ and this rank's value of each.
    """
    if shards.reduce is None:
        return shards.alive()
    mesh = _dtensor.mesh_of(shards.leaves)
    device = shards.locals[0].device
    hashes = [_hash62(text) for text in fingerprint.values()]
    value = float(amount) if isinstance(amount, (torch.Tensor, int, float)) else 0.0
    bits = struct.unpack("<q", struct.pack("<d", abs(value)))[0]  # non-negative floats order as their bits
    here = torch.zeros((), dtype=torch.int64, device=device)
    for t, keep, counted in zip(shards.locals, shards.keeps, shards.counted):
        if counted:
            here += t.numel() if keep is None else keep.sum()
    slots = torch.zeros(mesh.size(), dtype=torch.int64, device=device)
    coordinate = mesh.get_coordinate()
    slot = 0
    for c, size in zip(coordinate, mesh.shape):
        slot = slot * size + c
    slots[slot] = here
    head = torch.tensor(hashes + [-h for h in hashes] + [bits, -bits], dtype=torch.int64, device=device)
    reduce_max = _dtensor.mesh_sum(mesh, "max")
    assert reduce_max is not None  # shards.reduce is set: the leaves are DTensors on a mesh
    vector = reduce_max(torch.cat([head, slots]))
    parts = len(hashes)
    top, low = vector[:parts].tolist(), [-v for v in vector[parts : 2 * parts].tolist()]
    differ = [name for name, hi, lo in zip(fingerprint, top, low) if hi != lo]
    if differ:
        lo_bits, hi_bits = -int(vector[2 * parts + 1]), int(vector[2 * parts])
        span = struct.unpack("<d", struct.pack("<q", lo_bits))[0], struct.unpack("<d", struct.pack("<q", hi_bits))[0]
        mine = "; ".join(f"{name}: {fingerprint[name][:200]}" for name in differ)
        ranged = f" (amounts on the ranks span {span[0]!r} .. {span[1]!r})" if "amount" in differ else ""
        raise ValueError(
            f"the ranks of one global selection disagree about its {', '.join(differ)}{ranged}; every "
            f"rank must make the same call (same amount, method, tree, dtypes, prior masks). "
            f"This rank has {mine}"
        )
    return int(vector[2 * parts + 2 :].sum())


def select_global(
    leaves: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor | None],
    amount: Amount,
    *,
    method: str,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
    chunk: int = _radix.DEFAULT_CHUNK,
    largest: bool = False,
    names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """Keep masks after pruning ``amount`` of the surviving entries of all ``leaves`` together.

    ``method`` ``"l1"`` drops the smallest ``|leaf|`` (compared in ``dtype``); ``"random"`` the
    smallest hash-stream keys of one seed drawn from ``generator``; ``"scores"`` the smallest (or
    ``largest``) entries of the leaves themselves, which must be non-negative. Ties go to the
    lowest global index. ``keeps`` are bool masks laid out like their leaves (or None). The result is laid out
    like the leaves (DTensors with their mesh and placements). ``names`` name the leaves in errors
    and in the check that every rank made the same call (default: ``leaf 0``, ``leaf 1``, ...).

    Raises:
      ValueError: an int ``amount`` above the survivors (torch's message), ranks whose calls differ
        (see :func:`agreed_alive`), or ranks whose seeds differ.
    """
    if _dtensor.outside_mesh(leaves):
        return [_dtensor.empty_mask_like(t) for t in leaves]
    shards = _Shards(leaves, keeps)
    names = [f"leaf {i}" for i in range(len(leaves))] if names is None else list(names)
    alive = agreed_alive(shards, call_fingerprint(names, leaves, keeps, amount, method), amount)
    amount, k = _amount.drop_count(amount, alive, "parameters")
    spread: dict[str, Any] = dict(
        reduce=shards.reduce, counted=shards.counted, index_fn=shards.index, index_total=shards.total
    )
    if shards.reduce is None and method != "random" and not any(_dtensor.is_dtensor(t) for t in leaves):
        # plain tensors: the flat order is the global index order, so ties are counted off in one
        # pass (no index radix); the hash stream still reads its keys from the global indices
        spread = {}
    if method == "l1":
        local = _radix.radix_select_keep(
            shards.locals, shards.keeps, k, key_fn=lambda piece: piece.abs().to(dtype), chunk=chunk, **spread
        )
    elif method == "scores":
        local = _radix.radix_select_keep(shards.locals, shards.keeps, k, largest=largest, chunk=chunk, **spread)
    else:
        seed = draw_seed(generator, leaves)
        local = _radix.radix_select_keep(
            shards.locals,
            shards.keeps,
            k,
            key_fn=lambda index: hash_keys(seed, index),
            chunk=chunk,
            key_from_index=True,
            **spread,
        )
    return shards.wrap(local)
