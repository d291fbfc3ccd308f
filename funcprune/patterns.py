"""Structured sparsity patterns: N:M groups, blocks, and channels that carry their bias along.

Each mask function has the core's shape, ``(scores, ..., *, mask=None) -> bool mask``: it reads the
importance ``scores`` (usually the param itself), acts only on what ``mask`` still keeps, returns a
new ``torch.bool`` mask on the scores' device, and never reads tensor values to pick a shape, so it
runs under ``torch.func.vmap`` and on the ``meta`` device. Bad arguments raise before anything is
computed. The selection itself is the kernel's (:mod:`funcprune.select`): a pattern is its scores
plus a granularity.

* :func:`nm_structured` keeps the ``kept_per_group`` largest ``|scores|`` of every ``group_size``
  consecutive entries along ``dim`` (2:4, 4:8, ...); :func:`satisfies_nm` checks a mask for that
  pattern.
* :func:`block_structured` pools ``|scores|`` per block and prunes whole blocks.
* :func:`prune_channels` prunes output channels of weights (``ln_structured``) and the matching
  entries of their biases, a step ``torch.nn.utils.prune.ln_structured`` leaves to the user.

The layout ``torch.sparse.to_sparse_semi_structured`` expects is checked in :mod:`funcprune.export`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _amount, _backend, _pytree, select
from ._amount import Amount
from ._pytree import Include, Tree
from .methods import Norm, ln_structured
from .select import as_keep, check_dim

__all__ = ["nm_structured", "satisfies_nm", "block_structured", "channels_kept", "prune_channels"]


def check_group_counts(kept_per_group: int, group_size: int) -> None:
    """Raise for an N:M request that no tensor can satisfy (the core and compat share this check).

    Args:
      kept_per_group: N, the entries kept in every group.
      group_size: M, the entries of a group.

    Raises:
      TypeError: a count that is not an int. ValueError: ``group_size < 1`` or ``kept_per_group``
      outside ``[0, group_size]``.

    Example:
      >>> check_group_counts(2, 4)
    """
    if not isinstance(kept_per_group, int) or isinstance(kept_per_group, bool):
        raise TypeError(f"kept_per_group must be an int, got {kept_per_group!r}")
    select.check_group_size(group_size)
    if not 0 <= kept_per_group <= group_size:
        raise ValueError(
            f"kept_per_group must satisfy 0 <= kept_per_group <= group_size, got "
            f"kept_per_group={kept_per_group}, group_size={group_size}"
        )


def _nm_groups(shape: Sequence[int], kept_per_group: int, group_size: int, dim: int) -> select.Granularity:
    """The N:M groups of a tensor of ``shape``, after checking the request."""
    check_group_counts(kept_per_group, group_size)
    return select.groups(shape, group_size, dim)


def nm_structured(
    scores: torch.Tensor, kept_per_group: int, group_size: int, dim: int = -1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Keep the ``kept_per_group`` largest ``|scores|`` in every ``group_size`` consecutive entries along ``dim``.

    Only surviving entries of ``mask`` are candidates, so a group with fewer survivors keeps just
    those. Ties go to the lower index within the group (quantized and already-zero weights tie
    often), whatever the surviving scores hold (NaN ranks above ``inf``).

    Args:
      scores: importance of each entry (the param itself for magnitude pruning).
      kept_per_group: entries kept per group (N of N:M), ``0 <= kept_per_group <= group_size``.
      group_size: entries per group (M of N:M); ``scores.shape[dim]`` must be divisible by it.
      dim: the dim along which groups run (the last dim, input features of a Linear weight, by
        default, which is the layout of ``torch.sparse.to_sparse_semi_structured``).
      mask: existing mask; it stays pruned.

    Returns:
      A new bool mask that satisfies :func:`satisfies_nm` for ``(kept_per_group, group_size, dim)``.

    Raises:
      TypeError: ``kept_per_group``, ``group_size`` or ``dim`` not an int.
      ValueError: ``kept_per_group > group_size``, ``group_size < 1``, or a size along ``dim``
        not divisible by ``group_size``.
      IndexError: ``dim`` out of range.

    Example:
      >>> nm_structured(torch.tensor([[0.1, -3.0, 2.0, 0.5]]), kept_per_group=2, group_size=4)
      tensor([[False,  True,  True, False]])
      >>> nm_structured(torch.ones(1, 8), 2, 4)  # ties: the lower index
      tensor([[ True,  True, False, False,  True,  True, False, False]])
    """
    groups = _nm_groups(scores.shape, kept_per_group, group_size, dim)
    return select.keep_per_pool(scores, groups, kept_per_group, lambda: scores.detach().abs(), mask=mask)


def satisfies_nm(mask: torch.Tensor, kept_per_group: int, group_size: int, dim: int = -1) -> torch.Tensor:
    """Whether every group of ``group_size`` consecutive entries along ``dim`` keeps at most ``kept_per_group``.

    Args:
      mask: bool (or 0/1) mask; a nonzero entry counts as kept.
      kept_per_group, group_size, dim: the pattern, as in :func:`nm_structured`.

    Returns:
      A 0-d bool tensor (so the check also runs under ``vmap``).

    Example:
      >>> satisfies_nm(torch.tensor([[1, 0, 0, 1, 1, 1, 1, 0]]), 2, 4)
      tensor(False)
    """
    groups = _nm_groups(mask.shape, kept_per_group, group_size, dim)
    return (groups.pools(mask != 0).sum(-1) <= kept_per_group).all()


def block_structured(
    scores: torch.Tensor, amount: Amount, block_shape: Sequence[int], n: Norm = 1, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
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
    blocks = select.blocks(scores.shape, block_shape)
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"n must be a real norm order, got {n!r}")
    keep = as_keep(scores, mask)

    def block_norms():
        key = scores.detach().abs()
        key = key if keep is None else key * keep
        return blocks.pool(key.to(_float_of(key)), lambda t, dims: torch.linalg.vector_norm(t, ord=n, dim=dims))

    return select.prune_units(scores, blocks, amount, block_norms, mask=keep, what="blocks")


def _float_of(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.get_default_dtype()


def channels_kept(mask: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Which channels along ``dim`` still have a surviving entry (a 1-D bool tensor).

    For a DTensor mask: a plain vector, the same on every rank (one all-reduce of channel counts).

    Example:
      >>> channels_kept(torch.tensor([[True, False], [False, False]]))
      tensor([ True, False])
    """
    return _backend.channels_kept(mask, check_dim(dim, mask.shape))


def _bias_name(weight_name: str) -> str | None:
    head, _, last = weight_name.rpartition(".")
    if last != "weight":
        return None
    return f"{head}.bias" if head else "bias"


def prune_channels(
    params: Tree,
    amount: Amount,
    n: Norm = 2,
    dim: int = 0,
    *,
    masks: Tree | None = None,
    scores: Tree | None = None,
    include: Include = None,
    bias: bool = True,
) -> Tree:
    """Prune output channels of each selected weight by L``n`` norm, and the matching bias entries.

    Each selected leaf goes through :func:`funcprune.ln_structured` (so its mask is torch's
    ``ln_structured`` mask). With ``bias=True`` and ``dim=0``, the sibling ``<prefix>.bias`` of a
    ``<prefix>.weight`` leaf gets the weight's surviving output channels as its mask, on top of
    its own mask: a pruned output channel then outputs exactly zero instead of its bias.
    DTensor weights and biases (``Shard``/``Replicate``, any shard dims) give DTensor masks: one
    float64 per channel crosses the wire and every rank picks the same channels, whatever the world
    size and placements (see :func:`funcprune.ln_structured` for how they relate to one process).

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

    def step(name: str, leaf_scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        weights.append(name)
        return ln_structured(leaf_scores, amount, n, dim, mask=mask)

    def with_biases(named: dict, new: dict) -> None:
        for name in weights:
            bias_name = _bias_name(name)
            if not (bias and dim % named[name].dim() == 0 and bias_name in named):
                continue
            bias_leaf = named[bias_name]
            if bias_leaf.shape != (named[name].shape[0],):
                raise ValueError(
                    f"{bias_name}: shape {tuple(bias_leaf.shape)} does not match the "
                    f"{named[name].shape[0]} output channels of {name}"
                )
            kept = channels_kept(new[name], 0)
            bias_keep = as_keep(bias_leaf, new.get(bias_name), f"{bias_name} mask")
            new[bias_name] = _backend.spread_channels(kept, bias_leaf, 0, bias_keep)  # a DTensor: its own shard

    return _pytree.per_leaf(params, step, masks=masks, scores=scores, include=include, finish=with_biases)
