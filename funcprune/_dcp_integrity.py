"""Integrity of DCP mask checkpoints: a save id and a checksum of every saved shard, checked on any load.

DCP stores no checksums, and a directory can hold files of two saves (a rank that crashed while
saving over an older checkpoint leaves its old file next to the others' new ones). So each rank of
a save writes a *stamp*: a small int64 tensor of its own (``funcprune_masks_stamp/<rank>``) holding
the save id (random, 62 bits, also in the metadata's header) and, for every leaf, whether this
rank's shard is the one saved for its block (replicas are saved once), the shard's checksum, its
global offset and its shape.

The checksum of a block is the sum, over its kept entries, of ``u[row] * v[column]`` modulo the
prime ``2**31 - 1`` (the mask read as a matrix whose columns are its last dim; ``u``, ``v`` 31-bit
hashes of the global row and column indices, seeded by the save id and the leaf's name). Unlike a
CRC of the stored bytes it is a sum over entries, so a load that reshards (other world size, other
placements) still checks every saved shard exactly: each rank adds up the part of each saved block
it loaded, one ``all_reduce`` sums the parts. A kept entry moved to another position changes the
sum unless ``u[r] v[c] = u[r'] v[c']`` modulo the prime (about one chance in ``2**31`` for hashed
weights); a shard of another save (another seed) as well, and its stamp names another save id.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

from ._dtensor import flat_index, local, offset_and_shape
from ._sharded import hash_keys

STAMP = "funcprune_masks_stamp/"
PRIME = (1 << 31) - 1
_CHUNK = 1 << 20

Block = tuple[tuple[int, ...], tuple[int, ...]]  # (global offset, shape)


def leaf_seed(save_id: int, name: str) -> int:
    """The hash seed of one leaf of one save (below 2**63)."""
    return save_id ^ (zlib.crc32(name.encode("utf-8")) << 30)


def block_checksum(block: torch.Tensor, offset: Sequence[int], shape: Sequence[int], seed: int) -> int:
    """Checksum of a bool ``block`` of a mask of full ``shape``, the block at global ``offset``.

    The mask is read as a matrix (rows: every dim but the last, flattened; columns: the last dim)
    and the checksum is ``u @ mask @ v`` modulo :data:`PRIME`, ``u`` and ``v`` 31-bit hashes of the
    global row and column indices: hashes per row and per column (not per entry), then one masked
    sum per entry, ``chunk``-sized temporaries. A sum over entries, so blocks add up.

    Example:
      >>> mask = torch.tensor([[True, False, True], [False, True, True]])
      >>> whole = block_checksum(mask, (0, 0), (2, 3), 7)
      >>> parts = block_checksum(mask[:, :1], (0, 0), (2, 3), 7) + block_checksum(mask[:, 1:], (0, 1), (2, 3), 7)
      >>> whole == parts % PRIME
      True
    """
    if block.dim() == 0:
        block, offset, shape = block.reshape(1), (0,), (1,)
    cols = block.shape[-1]
    matrix = block.reshape(math.prod(block.shape[:-1]), cols)
    device = block.device
    rows = (
        hash_keys(
            seed,
            flat_index(
                tuple(offset[:-1]), tuple(block.shape[:-1]), tuple(shape[:-1]), 0, matrix.shape[0], device=device
            ),
        )
        >> 31
    )
    columns = hash_keys(seed ^ 0x5BD1E995, torch.arange(offset[-1], offset[-1] + cols, device=device)) >> 31
    step_c = min(max(cols, 1), _CHUNK)
    step_r = max(_CHUNK // step_c, 1)
    total = 0
    for r in range(0, matrix.shape[0], step_r):
        sums = torch.zeros(min(step_r, matrix.shape[0] - r), dtype=torch.int64, device=device)
        for c in range(0, cols, step_c):  # each partial row sum is below 2**51: no int64 overflow
            piece = matrix[r : r + step_r, c : c + step_c]
            sums += torch.where(piece, columns[c : c + step_c], 0).sum(dim=1) % PRIME
        total += int(((sums % PRIME) * rows[r : r + step_r] % PRIME).sum())
    return total % PRIME


def stamp_length(shapes: Sequence[Sequence[int]]) -> int:
    """Entries of a stamp for leaves of these full shapes."""
    return 1 + sum(2 + 2 * len(shape) for shape in shapes)


def make_stamp(save_id: int, named: dict[str, torch.Tensor], saved_here: Sequence[bool]) -> torch.Tensor:
    """This rank's stamp: the save id, then per leaf ``saved, checksum, *offset, *local shape``."""
    values = [save_id]
    for (name, mask), saved in zip(named.items(), saved_here):
        offset, shape = offset_and_shape(mask)
        check = block_checksum(local(mask) != 0, offset, mask.shape, leaf_seed(save_id, name)) if saved else 0
        values += [int(saved), check, *offset, *shape]
    return torch.tensor(values, dtype=torch.int64)


def read_stamps(
    where: str, stamps: Sequence[torch.Tensor], save_id: int, shapes: dict[str, Sequence[int]]
) -> dict[str, list[tuple[int, int, Block]]]:
    """Per leaf, the saved blocks ``(writer rank, checksum, block)``, after checking every stamp's save id.

    Raises:
      ValueError: a stamp of another save (naming the rank that wrote it).
    """
    out: dict[str, list[tuple[int, int, Block]]] = {name: [] for name in shapes}
    for rank, stamp in enumerate(stamps):
        values = stamp.tolist()
        if values[0] != save_id:
            raise ValueError(
                f"{where}: the shards written by rank {rank} belong to another save (id {values[0]:#x}) "
                f"than the checkpoint's metadata ({save_id:#x}): the directory mixes files of two saves "
                f"(e.g. a save that did not finish over an older one)"
            )
        at = 1
        for name, shape in shapes.items():
            dims = len(shape)
            saved, check = values[at], values[at + 1]
            offset, size = tuple(values[at + 2 : at + 2 + dims]), tuple(values[at + 2 + dims : at + 2 + 2 * dims])
            at += 2 + 2 * dims
            if saved:
                out[name].append((rank, check, (offset, size)))
    return out


def _overlap(mine: Block, saved: Block) -> Block | None:
    start = tuple(max(a, b) for a, b in zip(mine[0], saved[0]))
    stop = tuple(min(a + n, b + m) for a, n, b, m in zip(mine[0], mine[1], saved[0], saved[1]))
    if any(b <= a for a, b in zip(start, stop)):
        return None
    return start, tuple(b - a for a, b in zip(start, stop))


def partial_checksums(
    name: str, mask: torch.Tensor, counts_here: bool, save_id: int, blocks: Sequence[tuple[int, int, Block]]
) -> list[int]:
    """This rank's part of every saved block's checksum (0 where it holds none of it or does not count)."""
    if not counts_here:
        return [0] * len(blocks)
    offset, shape = offset_and_shape(mask)
    keep, seed, out = local(mask) != 0, leaf_seed(save_id, name), []
    for _, _, saved in blocks:
        common = _overlap((tuple(offset), tuple(shape)), saved)
        if common is None:
            out.append(0)
            continue
        block = keep
        for dim, (start, size) in enumerate(zip(*common)):
            block = block.narrow(dim, start - offset[dim], size)
        out.append(block_checksum(block, common[0], mask.shape, seed))
    return out


def check_blocks(where: str, name: str, blocks: Sequence[tuple[int, int, Block]], sums: Sequence[int]) -> None:
    """Raise unless every saved block's loaded checksum (``sums``, summed over ranks) is the saved one.

    Raises:
      ValueError: naming the leaf and the shard (the rank that wrote it, its offset and shape).
    """
    for (rank, check, (offset, shape)), got in zip(blocks, sums):
        if got % PRIME != check:
            raise ValueError(
                f"{where}: {name}: the shard written by rank {rank} (offset {list(offset)}, shape "
                f"{list(shape)}) does not match its checksum: the checkpoint is damaged or mixes "
                f"two saves"
            )
