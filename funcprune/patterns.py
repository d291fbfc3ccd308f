"""Structured sparsity patterns: N:M groups, blocks, and channels that carry their bias along.

Each mask function has the core's shape, ``(scores, ..., mask) -> bool mask``: it reads the
importance ``scores`` (usually the param itself), acts only on what ``mask`` still keeps, returns a
new ``torch.bool`` mask on the scores' device, and never reads tensor values to pick a shape, so it
runs under ``torch.func.vmap`` and on the ``meta`` device. Bad arguments raise before anything is
computed.

* :func:`nm_structured` keeps the ``n`` largest ``|scores|`` of every ``m`` consecutive entries
  along ``dim`` (2:4, 4:8, ...); :func:`satisfies_nm` checks a mask for that pattern.
* :func:`block_structured` pools ``|scores|`` per block and prunes whole blocks.
* :func:`prune_channels` prunes output channels of weights (``ln_structured``) and the matching
  entries of their biases, a step ``torch.nn.utils.prune.ln_structured`` leaves to the user.

The layout ``torch.sparse.to_sparse_semi_structured`` expects is checked in :mod:`funcprune.export`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from . import _amount, _pytree
from ._amount import Amount
from ._pytree import Include, Tree
from ._select import select
from ._amount import drop_count
from ._select import as_keep, count_kept
from .methods import Norm, ln_structured

__all__ = ["nm_structured", "satisfies_nm", "block_structured", "channels_kept", "prune_channels"]


def _check_nm(shape: Sequence[int], n: int, m: int, dim: int) -> int:
    """Validate an N:M request for a tensor of ``shape``; return ``dim`` made non-negative."""
    for value, what in ((n, "n"), (m, "m"), (dim, "dim")):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} must be an int, got {value!r}")
    if m < 1:
        raise ValueError(f"m must be a positive group size, got m={m}")
    if not 0 <= n <= m:
        raise ValueError(f"n must satisfy 0 <= n <= m, got n={n}, m={m}")
    if len(shape) == 0:
        raise ValueError("N:M patterns need a tensor with at least one dim, got a 0-d tensor")
    if not -len(shape) <= dim < len(shape):
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(shape)}")
    dim %= len(shape)
    if shape[dim] % m:
        raise ValueError(f"size {shape[dim]} of dim {dim} (shape {tuple(shape)}) is not divisible by m={m}")
    return dim


def _groups(t: torch.Tensor, m: int, dim: int) -> torch.Tensor:
    """View ``t`` with ``dim`` moved last and split into groups of ``m``: shape ``(..., size // m, m)``."""
    moved = t.movedim(dim, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)


def nm_structured(scores: torch.Tensor, n: int, m: int, dim: int = -1,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Keep the ``n`` largest ``|scores|`` in every group of ``m`` consecutive entries along ``dim``.

    Only surviving entries of ``mask`` are candidates, so a group with fewer than ``n`` survivors
    keeps just those. Ties go to the lower index within the group (``torch.topk``'s order).

    Args:
      scores: importance of each entry (the param itself for magnitude pruning).
      n: entries kept per group, ``0 <= n <= m``.
      m: group size; ``scores.shape[dim]`` must be divisible by it.
      dim: the dim along which groups run (the last dim, input features of a Linear weight, by
        default, which is the layout of ``torch.sparse.to_sparse_semi_structured``).
      mask: existing mask; it stays pruned.

    Returns:
      A new bool mask that satisfies :func:`satisfies_nm` for ``(n, m, dim)``.

    Raises:
      TypeError: ``n``, ``m`` or ``dim`` not an int.
      ValueError: ``n > m``, ``m < 1``, or a size along ``dim`` not divisible by ``m``.
      IndexError: ``dim`` out of range.

    Example:
      >>> nm_structured(torch.tensor([[0.1, -3.0, 2.0, 0.5]]), n=2, m=4)
      tensor([[False,  True,  True, False]])
    """
    dim = _check_nm(scores.shape, n, m, dim)
    keep = as_keep(scores, mask)
    key = scores.detach().abs()
    if keep is not None:
        key = key.masked_fill(~keep, -math.inf) if key.is_floating_point() else key.masked_fill(~keep, -1)
    grouped = _groups(key, m, dim)
    idx = torch.topk(grouped, n, dim=-1).indices
    chosen = torch.zeros(grouped.shape, dtype=torch.bool, device=scores.device).scatter(-1, idx, True)
    moved_shape = scores.movedim(dim, -1).shape
    new = chosen.reshape(moved_shape).movedim(-1, dim)
    return new if keep is None else new & keep


def satisfies_nm(mask: torch.Tensor, n: int, m: int, dim: int = -1) -> torch.Tensor:
    """Whether every group of ``m`` consecutive entries along ``dim`` keeps at most ``n``.

    Args:
      mask: bool (or 0/1) mask; a nonzero entry counts as kept.
      n, m, dim: the pattern, as in :func:`nm_structured`.

    Returns:
      A 0-d bool tensor (so the check also runs under ``vmap``).

    Example:
      >>> satisfies_nm(torch.tensor([[1, 0, 0, 1, 1, 1, 1, 0]]), 2, 4)
      tensor(False)
    """
    dim = _check_nm(mask.shape, n, m, dim)
    return ((_groups(mask != 0, m, dim).sum(-1)) <= n).all()


def _check_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> tuple:
    if isinstance(block_shape, int) or not all(isinstance(b, int) and not isinstance(b, bool) for b in block_shape):
        raise TypeError(f"block_shape must be a sequence of ints, got {block_shape!r}")
    block_shape = tuple(block_shape)
    if len(block_shape) != len(shape):
        raise ValueError(f"block_shape {block_shape} must have one size per dim of the tensor of shape {tuple(shape)}")
    bad = [d for d, (s, b) in enumerate(zip(shape, block_shape)) if b < 1 or s % b]
    if bad:
        raise ValueError(f"block_shape {block_shape} does not tile shape {tuple(shape)}: dim(s) {bad} are not "
                         "positive divisors of the sizes")
    return block_shape


def _blocked(t: torch.Tensor, block_shape: tuple) -> torch.Tensor:
    """``t`` viewed as ``(g0, b0, g1, b1, ...)`` with ``gi = size_i // bi``."""
    split = [size for s, b in zip(t.shape, block_shape) for size in (s // b, b)]
    return t.reshape(split)


def block_structured(scores: torch.Tensor, amount: Amount, block_shape: Sequence[int], n: Norm = 1,
                     mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Prune the ``amount`` alive blocks whose surviving ``|scores|`` have the smallest L``n`` norm.

    The tensor is tiled by ``block_shape`` from index 0. A block is alive while any of its entries
    survives; its score is the norm of its surviving entries (pruned ones count as zero, the way
    ``torch.ao.pruning.WeightNormSparsifier`` pools the already-masked weight). ``amount`` follows
    the core's rules over alive blocks: an int count or a float fraction of them.

    Args:
      scores: importance of each entry.
      amount: blocks to prune: int, float in ``[0, 1]`` (fraction of alive blocks), or 0-d tensor.
      block_shape: one block size per dim of ``scores``, each dividing that dim's size.
      n: norm order used to pool a block (as ``p`` of :func:`torch.linalg.vector_norm`).
      mask: existing mask; it stays pruned.

    Raises:
      TypeError, ValueError: a malformed ``block_shape``, a block shape that does not tile the
        tensor, or a bad ``amount`` (also an int count above the alive blocks).

    Example:
      >>> w = torch.tensor([[1.0, 1.0, 0.1, 0.1], [1.0, 1.0, 0.1, 0.1]])
      >>> block_structured(w, 1, (2, 2))
      tensor([[ True,  True, False, False],
              [ True,  True, False, False]])
    """
    _amount.validate_amount(amount)
    block_shape = _check_blocks(scores.shape, block_shape)
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"n must be a real norm order, got {n!r}")
    keep = as_keep(scores, mask)
    key = scores.detach().abs()
    if keep is not None:
        key = key * keep
    inner = tuple(range(1, 2 * scores.dim(), 2))
    pooled = torch.linalg.vector_norm(_blocked(key, block_shape).to(_float_of(key)), ord=n, dim=inner)
    alive_blocks = None if keep is None else _blocked(keep, block_shape).any(dim=inner).reshape(-1)
    total = pooled.numel()
    alive = total if keep is None else count_kept(alive_blocks)
    amount, k = drop_count(amount, alive, "blocks")
    dropped = select(pooled.reshape(-1), k, largest=False, alive=alive_blocks,
                     k_max=_amount.max_prune_count(amount, total))
    kept_blocks = (~dropped).view(pooled.shape)
    view = [size for g in pooled.shape for size in (g, 1)]
    full = [size for s, b in zip(scores.shape, block_shape) for size in (s // b, b)]
    new = kept_blocks.reshape(view).expand(full).reshape(scores.shape)
    return new if keep is None else new & keep


def _float_of(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def channels_kept(mask: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Which channels along ``dim`` still have a surviving entry (a 1-D bool tensor).

    Example:
      >>> channels_kept(torch.tensor([[True, False], [False, False]]))
      tensor([ True, False])
    """
    if not isinstance(dim, int) or isinstance(dim, bool):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if mask.dim() == 0 or not -mask.dim() <= dim < mask.dim():
        raise IndexError(f"Invalid index {dim} for tensor of size {tuple(mask.shape)}")
    dim %= mask.dim()
    others = [d for d in range(mask.dim()) if d != dim]
    kept = mask != 0
    return kept.any(dim=others) if others else kept


def _bias_name(weight_name: str) -> Optional[str]:
    head, _, last = weight_name.rpartition(".")
    if last != "weight":
        return None
    return f"{head}.bias" if head else "bias"


def prune_channels(params: Tree, amount: Amount, n: Norm = 2, dim: int = 0, *, masks: Optional[Tree] = None,
                   scores: Optional[Tree] = None, include: Include = None, bias: bool = True) -> Tree:
    """Prune output channels of each selected weight by L``n`` norm, and the matching bias entries.

    Each selected leaf goes through :func:`funcprune.ln_structured` (so its mask is torch's
    ``ln_structured`` mask). With ``bias=True`` and ``dim=0``, the sibling ``<prefix>.bias`` of a
    ``<prefix>.weight`` leaf gets the weight's surviving output channels as its mask, on top of
    its own mask: a pruned output channel then outputs exactly zero instead of its bias.

    Args:
      params: pytree of tensors named like ``named_parameters()``.
      amount: channels to prune per weight: int, float fraction of alive channels, or 0-d tensor.
      n: norm order for :func:`funcprune.ln_structured`.
      dim: channel dim of the weights (0: output channels of Linear/Conv weights).
      masks: existing masks over some of the names.
      scores: optional importance scores over some of the names.
      include: which weights to prune (None: every leaf named ``*weight`` with 2+ dims).
      bias: also mask the matching bias (only meaningful, and only done, for ``dim=0``).

    Returns:
      New masks: the selected weights, their biases, and the earlier masks of other leaves.

    Raises:
      KeyError: an unknown name; TypeError/ValueError: a mask or scores leaf that is not a tensor of
      its param's shape; ValueError/TypeError/IndexError from ``ln_structured``, prefixed with the leaf
      name. Nothing is returned half-done.

    Example:
      >>> params = {"fc.weight": torch.tensor([[1.0, 1.0], [0.1, 0.1]]), "fc.bias": torch.ones(2)}
      >>> prune_channels(params, 1)["fc.bias"]
      tensor([ True, False])
    """
    if include is None:
        include = lambda name, leaf: name.rpartition(".")[2] == "weight" and leaf.dim() >= 2  # noqa: E731
    weights = []

    def step(name: str, leaf_scores: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        weights.append(name)
        return ln_structured(leaf_scores, amount, n, dim, mask=mask)

    def with_biases(named: dict, new: dict) -> None:
        for name in weights:
            bias_name = _bias_name(name)
            if not (bias and dim % named[name].dim() == 0 and bias_name in named):
                continue
            bias_leaf = named[bias_name]
            if bias_leaf.shape != (named[name].shape[0],):
                raise ValueError(f"{bias_name}: shape {tuple(bias_leaf.shape)} does not match the "
                                 f"{named[name].shape[0]} output channels of {name}")
            kept = channels_kept(new[name], 0).to(bias_leaf.device)
            bias_keep = as_keep(bias_leaf, new.get(bias_name), f"{bias_name} mask")
            new[bias_name] = kept if bias_keep is None else kept & bias_keep

    return _pytree.per_leaf(params, step, masks=masks, scores=scores, include=include, finish=with_biases)
