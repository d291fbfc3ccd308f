"""The hash stream: pseudo-random keys that depend on ``(seed, global flat index)`` only.

A counter-based hash, so entry ``i`` gets the same key wherever it is computed: a mask drawn
from it is the same for the same seed whatever the world size and placement, with no full-size
draw anywhere, and a one-process run reproduces a distributed one bit for bit. It is not torch's
stream (``torch.rand``), so it does not reproduce torch's random masks. The int64 arithmetic keeps
every intermediate below 2**63 (no wrap-around anywhere).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch

from . import _dtensor

__all__ = ["hash_keys", "draw_seed", "random_channel_keys"]

_M32 = 0xFFFFFFFF
_H = TypeVar("_H", int, torch.Tensor)  # the hash rounds run on Python ints (the seed) and int64 tensors


def _mul32(h: _H, c: int) -> _H:
    """``(h * c) mod 2**32`` for 32-bit ``h`` and ``c``, in int64 without overflow (16-bit halves of ``c``)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(h: _H) -> _H:
    """A bijective 32-bit finalizer (the "lowbias32" xor-shift-multiply rounds)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def hash_keys(seed: int, index: torch.Tensor) -> torch.Tensor:
    """Pseudo-random non-negative int64 keys (below 2**62) of ``(seed, index)``, for int64 ``index >= 0``.

    A counter-based stream: entry ``i`` gets the same key wherever it is computed, so any sharding
    of the indices gives the same keys. The seed is mixed in nonlinearly (pre-hashed, and again
    after the first round), so ``hash_keys(seed ^ d, i)`` is not ``hash_keys(seed, i ^ d)``.

    Example:
      >>> a = hash_keys(7, torch.arange(4))
      >>> bool((a == hash_keys(7, torch.arange(4))).all()), bool((a >= 0).all())
      (True, True)
    """
    s0, s1 = seed & _M32, (seed >> 32) & _M32
    k0 = _mix32((s0 + 0x9E3779B9) & _M32)  # the seed pre-hashed (Python ints): it enters each round
    k1 = _mix32(((s1 ^ k0) + 0x7F4A7C15) & _M32)  # nonlinearly, so no seed change equals an index change
    lo, hi = index & _M32, index >> 32
    a = _mix32(_mix32(lo ^ s0) ^ k0)
    b = _mix32(_mix32(hi ^ s1) ^ a ^ k1)
    a = _mix32(a ^ _mul32(b, 0x9E3779B9) ^ k1)
    return ((a >> 1) << 31) | (b >> 1)


def draw_seed(generator: torch.Generator | None, tensors: Sequence[torch.Tensor]) -> int:
    """One 63-bit seed from ``generator`` (or the global RNG); for DTensors, checked equal on every rank.

    Raises:
      ValueError: ranks drew different seeds (their RNG states differ: seed them alike).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))
    reduce = None if _dtensor.outside_mesh(tensors) else _dtensor.mesh_sum(_dtensor.mesh_of(tensors), "max")
    if reduce is not None:  # max(seed) == -max(-seed) iff every rank drew the same seed
        both = reduce(torch.tensor([seed, -seed], dtype=torch.int64, device=_dtensor.local(tensors[0]).device))
        if int(both[0]) != -int(both[1]):
            raise ValueError(
                f"ranks drew different random seeds ({-int(both[1])} .. {int(both[0])}): seed every "
                f"rank's RNG alike (torch.manual_seed) or pass a generator seeded alike"
            )
    return seed


def random_channel_keys(seed: int, channels: int, device) -> torch.Tensor:
    """Hash-stream keys of the channels (indexed 0 .. channels-1)."""
    return hash_keys(seed, torch.arange(channels, dtype=torch.int64, device=device))
