"""One-shot pruning of a layer from calibration statistics: Wanda, SparseGPT, OWL's layerwise amounts.

Pure functions of one weight (``(out_features, in_features)``, the :class:`torch.nn.Linear` layout)
and the statistics of the inputs it reads, built on the selection kernel: a method is its scores
plus a granularity (every output row for Wanda, every block of columns or every group of ``m``
inputs for SparseGPT), so ranking, survivors and ties follow the kernel's rules.

* :func:`wanda` (Sun et al., 2023): score ``|W| * ||X_j||``; every row loses ``amount`` of its
  entries (torch's amount rule per row: a fraction of the row's survivors, rounded half to even,
  or an int count). The reference floors; the two agree wherever ``amount * in_features`` is whole.
  Ties go to the lower input index, as the reference's stable sort breaks them.
* :func:`sparsegpt` (Frantar & Alistarh, 2023): the reference's reconstruction, step by step
  (dead inputs, damping, the upper Cholesky factor of ``H^-1``, blocks of columns, the error of
  every pruned column pushed into the later ones). One difference, on purpose: a block prunes
  exactly ``round(amount * alive entries of the block)``, where the reference's threshold
  ``score <= sorted[int(amount * n)]`` prunes one more entry than asked (and every entry tied
  with it).
* :func:`outlier_ratio` and :func:`owl` (Yin et al., 2024): a block's share of outlier scores
  and the non-uniform per-block amounts derived from them.

``pattern=(n, m)`` keeps ``n`` of every ``m`` consecutive inputs of each row (``(2, 4)`` is
2:4); the papers' scripts name the *pruned* count ``n``, which is the same number for 2:4 and 4:8.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import torch

from .. import _backend
from .._amount import Amount, validate_amount
from ..patterns import check_group_counts
from ..select import as_keep, groups, keep_per_pool, prune_units, rows

__all__ = ["wanda", "wanda_scores", "sparsegpt", "outlier_ratio", "owl", "check_pattern", "ieee_matmul"]

Pattern = tuple[int, int] | None


def check_pattern(pattern: Pattern, in_features: int | None = None, what: str = "weight") -> Pattern:
    """``pattern`` as a checked ``(n, m)`` (or None); ValueError naming ``what`` when ``m`` does not divide its inputs.

    Raises:
      TypeError: not a pair of ints. ValueError: ``not 0 <= n <= m``, ``m < 1``, or ``in_features % m``.
    """
    if pattern is None:
        return None
    if not isinstance(pattern, (tuple, list)) or len(pattern) != 2:
        raise TypeError(f"pattern must be a pair (n, m) keeping n of every m inputs, got {pattern!r}")
    n, m = pattern
    check_group_counts(n, m)
    if in_features is not None and in_features % m:
        raise ValueError(
            f"{what}: pattern {n}:{m} needs the number of inputs to be divisible by {m}, got {in_features} inputs"
        )
    return (n, m)


def _check_weight(weight: torch.Tensor, what: str = "weight") -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{what} must be a 2-D floating tensor (out_features, in_features), got {shape}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{what} holds NaN or inf")


def _rows_here(weight: torch.Tensor, what: str = "weight") -> torch.Tensor:
    """The rows of ``weight`` this process holds (all of a plain tensor), after the layout checks."""
    if isinstance(weight, torch.Tensor):
        _backend.check_rows_whole(weight, what)
        weight = _backend.local(weight).detach()
    _check_weight(weight, what)
    return weight


def wanda_scores(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """Wanda's scores ``|W_ij| * input_norm_j`` (also OWL's input), in the promoted dtype of the two.

    Args:
      weight: ``(out_features, in_features)``.
      input_norm: ``(in_features,)``: the L2 norm of every input feature over the calibration tokens.

    Returns:
      A tensor of ``weight``'s shape (for a row-sharded DTensor ``weight``, a DTensor laid out like it).

    Raises:
      ValueError: ``input_norm`` of the wrong shape, negative, NaN or inf.
    """
    here = _rows_here(weight)
    if not isinstance(input_norm, torch.Tensor) or tuple(input_norm.shape) != (weight.shape[1],):
        shape = tuple(input_norm.shape) if isinstance(input_norm, torch.Tensor) else type(input_norm).__name__
        raise ValueError(
            f"input_norm must have shape ({weight.shape[1]},) (one norm per input of the weight of "
            f"shape {tuple(weight.shape)}), got {shape}"
        )
    if not bool(torch.isfinite(input_norm).all()) or bool((input_norm < 0).any()):
        raise ValueError("input_norm must be finite and non-negative (NaN/inf calibration activations?)")
    return _backend.wrap(here.abs() * input_norm.to(here.device).reshape(1, -1), weight)


def wanda(
    weight: torch.Tensor,
    input_norm: torch.Tensor,
    amount: Amount,
    *,
    pattern: Pattern = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wanda's mask: in every output row, prune ``amount`` of the entries of lowest ``|W| * input_norm``.

    Args:
      weight: ``(out_features, in_features)``.
      input_norm: ``(in_features,)`` L2 norms of the calibration inputs (``sqrt`` of their sums of squares).
      amount: per row: a float in ``[0, 1]`` (of the row's survivors, rounded half to even) or an int
        count. Ignored when ``pattern`` is given.
      pattern: ``(n, m)``: keep the ``n`` best of every ``m`` consecutive inputs in each row.
      mask: an existing keep mask; only its survivors are candidates and it stays pruned (a row with
        ``s`` survivors loses ``round(amount * s)``).

    Returns:
      A new bool keep mask of ``weight``'s shape. Ties go to the lower input index. A DTensor
      ``weight`` with whole rows on each rank (``Shard(0)``, as FSDP2 shards, or ``Replicate``)
      gets a DTensor mask laid out like it, each rank choosing in its own rows.

    Raises:
      ValueError, TypeError: a bad amount, pattern, mask, or ``input_norm`` (named in the message).

    Example:
      >>> w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
      >>> wanda(w, torch.tensor([4.0, 1.0, 1.0, 1.0]), 0.5)
      tensor([[ True, False,  True, False]])
    """
    scores = _backend.local(wanda_scores(weight, input_norm))  # this rank's rows
    keep = as_keep(scores, _backend.shard_of(mask, weight, "mask"))
    if scores.shape[0] == 0:  # a rank holding no rows: the same checks on one row, so every rank raises alike
        empty = torch.zeros((1, scores.shape[1]), dtype=scores.dtype, device=scores.device)
        return _backend.wrap(wanda(empty, input_norm, amount, pattern=pattern)[:0], weight)
    pattern = check_pattern(pattern, weight.shape[1])
    if pattern is not None:
        n, m = pattern
        out = keep_per_pool(scores, groups(scores.shape, m, 1), n, scores, mask=keep)
    else:
        validate_amount(amount)
        out = prune_units(scores, rows(scores.shape, 0), amount, scores, mask=keep, what="entries of a row")
    return _backend.wrap(out, weight)


@contextlib.contextmanager
def ieee_matmul() -> Iterator[None]:
    """float32 matmuls in full IEEE precision (no TF32) inside the block, whatever the global setting."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    precision = getattr(matmul, "fp32_precision", None)
    try:
        matmul.allow_tf32 = False
        if precision is not None:
            matmul.fp32_precision = "ieee"
        yield
    finally:
        if precision is not None:
            matmul.fp32_precision = precision
        matmul.allow_tf32 = saved


def _check_hessian(hessian: torch.Tensor, columns: int) -> None:
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (columns, columns):
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise ValueError(f"hessian must have shape ({columns}, {columns}) (the weight's inputs), got {shape}")
    if hessian.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"hessian must be float32 or float64 (it sets the precision), got {hessian.dtype}")
    if not bool(torch.isfinite(hessian).all()):
        raise ValueError("hessian holds NaN or inf (non-finite calibration activations?)")
    # X Xᵀ is symmetric up to the summation order of its two triangles.
    scale = hessian.abs().max()
    tol = 64 * torch.finfo(hessian.dtype).eps * scale
    if bool(((hessian - hessian.mT).abs() > tol).any()):
        raise ValueError("hessian is not symmetric: pass X Xᵀ of the layer's inputs")


def _check_sparsegpt_args(amount, pattern, block_size, damp) -> None:
    if pattern is None:
        validate_amount(amount)
        if isinstance(amount, numbers.Integral):
            raise TypeError(
                f"sparsegpt prunes a fraction of every block of columns: amount must be a float in "
                f"[0, 1], got {amount!r}"
            )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if pattern is not None and block_size % pattern[1]:
        raise ValueError(f"block_size={block_size} must be a multiple of the pattern's group size m={pattern[1]}")
    if isinstance(damp, bool) or not isinstance(damp, numbers.Real) or not 0 <= float(damp) < math.inf:
        raise ValueError(f"damp must be a non-negative float, got {damp!r}")


def check_sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    amount,
    pattern: Pattern,
    block_size: int,
    damp: float,
    what: str = "weight",
) -> Pattern:
    """Every check :func:`sparsegpt` makes of its arguments; returns the checked pattern."""
    _check_weight(weight, what)
    pattern = check_pattern(pattern, weight.shape[1], what)
    _check_sparsegpt_args(amount, pattern, block_size, damp)
    _check_hessian(hessian, weight.shape[1])
    return pattern


def inverse_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(dead inputs, upper Cholesky factor of the damped ``H^-1``), as the reference computes them."""
    h = hessian.clone()
    diag = h.diagonal()
    dead = diag == 0
    diag.add_(dead.to(h.dtype))  # a dead input's diagonal 0 -> 1 (its row and column are 0 already)
    diag.add_(damp * diag.mean())
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"hessian is not positive definite after damping (damp={damp}): raise damp") from err
    return dead, torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    amount: float | None,
    *,
    pattern: Pattern = None,
    mask: torch.Tensor | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prune ``weight`` and update its surviving entries to reconstruct the layer's outputs.

    Inputs ``j`` never active (``hessian[j, j] == 0``) get ``H[j, j] = 1`` and ``W[:, j] = 0``; the
    diagonal is damped by ``damp * mean(diag)``; ``U`` is the upper Cholesky factor of ``H^-1``.
    Columns are processed in blocks of ``block_size``: the block's mask is chosen over all its
    rows by ``w^2 / U_jj^2`` (exactly ``round(amount * alive entries)`` pruned, ties to the lower
    row-major index); with a pattern, each
    row keeps ``n`` of every ``m`` inputs, chosen by the same score on the already-updated weights
    when the group's first column is reached. Each pruned column's error is pushed into the
    later columns through ``U``. Computed in ``hessian``'s dtype (float32 or float64, never TF32).

    Args:
      weight: ``(out_features, in_features)``.
      hessian: ``(in_features, in_features)``: ``X Xᵀ`` of the calibration inputs (any positive scale).
      amount: the fraction of every block to prune (ignored with ``pattern``).
      pattern: ``(n, m)``: keep ``n`` of every ``m`` consecutive inputs in each row.
      mask: an existing keep mask; its pruned entries stay pruned (and 0), only survivors are candidates.
      block_size: columns per block (a multiple of ``m`` with a pattern).
      damp: the diagonal damping, relative to the mean diagonal.

    Returns:
      ``(new_weight, keep_mask)``: the updated weight in ``weight``'s dtype, pruned entries exactly 0,
      and the bool mask. A DTensor ``weight`` with whole rows on each rank (``Shard(0)``, as FSDP2
      shards, or ``Replicate``) gets both laid out like it: each rank updates its own rows, and every
      block's selection is the exact cut over all ranks' rows (the same masks as one process).

    Raises:
      ValueError, TypeError: bad amount, pattern, block_size, damp, mask, a hessian of the wrong shape or
        dtype, not symmetric, NaN/inf, or not positive definite after damping.

    Example:
      >>> w = torch.tensor([[1.0, 0.1, -2.0, 0.3]])
      >>> new, keep = sparsegpt(w, torch.eye(4), 0.5)
      >>> keep
      tensor([[ True, False,  True, False]])
    """
    here = _rows_here(weight)
    pattern = check_sparsegpt(here, hessian, amount, pattern, block_size, damp)
    columns = here.shape[1]
    prior = as_keep(here, _backend.shard_of(mask, weight, "mask"))
    dtype = hessian.dtype

    def choose(scores: torch.Tensor, keep1: torch.Tensor) -> torch.Tensor:
        """The block's keep mask: the exact cut over every rank's rows of the block, ties to the lower index."""
        key = _backend.rows_like(scores, weight)
        cut = _backend.global_cut(key, _backend.rows_like(keep1, weight), cast(float, amount), key, largest=False)
        return _backend.local(cut)

    with ieee_matmul():
        dead, hinv = inverse_factor(hessian.to(here.device), float(damp))
        w = torch.where(dead.reshape(1, -1), 0, here.to(dtype))
        keep = torch.ones_like(w, dtype=torch.bool) if prior is None else prior.clone()
        for i1 in range(0, columns, block_size):
            prune_block(w, keep, hinv, i1, min(i1 + block_size, columns), pattern, choose, prior=prior is not None)
    return _backend.wrap(w.to(here.dtype), weight), _backend.wrap(keep, weight)


def prune_block(
    w: torch.Tensor,
    keep: torch.Tensor,
    hinv: torch.Tensor,
    i1: int,
    i2: int,
    pattern: Pattern,
    choose: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    prior: bool = True,
) -> None:
    """Columns ``i1:i2`` of ``w`` and ``keep``, in place: choose, prune, push the error on.

    ``choose(scores, keep1) -> keep1`` is the block's unstructured selection (over the rows of
    every rank); N:M groups are chosen row by row. ``prior=False`` says ``keep`` is all True (no
    earlier mask), so N:M groups skip the survivors bookkeeping.
    """
    w1 = w[:, i1:i2].clone()
    h1 = hinv[i1:i2, i1:i2]
    d1 = h1.diagonal().reshape(1, -1)
    keep1 = keep[:, i1:i2]
    keep1 = choose(w1**2 / d1**2, keep1) if pattern is None else keep1.clone()
    errors = torch.zeros_like(w1)
    per_row = None if pattern is None else groups((w1.shape[0], pattern[1]), pattern[1], 1)
    for i in range(i2 - i1):
        if pattern is not None and i % pattern[1] == 0:
            n, m = pattern
            assert per_row is not None  # set whenever pattern is
            part = w1[:, i : i + m]
            scores = part**2 / d1[:, i : i + m] ** 2
            keep1[:, i : i + m] = keep_per_pool(part, per_row, n, scores, mask=keep1[:, i : i + m] if prior else None)
        col = w1[:, i]
        q = torch.where(keep1[:, i], col, 0)
        err = (col - q) / h1[i, i]
        w1[:, i:] -= err.unsqueeze(1).matmul(h1[i, i:].unsqueeze(0))
        w1[:, i] = q
        errors[:, i] = err
    w[:, i1:i2] = w1
    keep[:, i1:i2] = keep1
    w[:, i2:] -= errors.matmul(hinv[i1:i2, i2:])


def outlier_ratio(scores: torch.Tensor | Sequence[torch.Tensor], threshold: float = 5.0) -> float:
    """OWL's outlier ratio: the share of ``scores`` above ``threshold`` times their mean (a fraction).

    Args:
      scores: one tensor, or the score tensors of all the layers of a block (taken together: one
        common mean), usually :func:`wanda_scores`.
      threshold: OWL's ``M``.

    Returns:
      A float in ``[0, 1]``. DTensor scores (a block of FSDP2-sharded layers) are counted over all
      ranks: their sum and counts cross the wire, never a score.

    Example:
      >>> outlier_ratio(torch.tensor([1.0, 1.0, 1.0, 1.0, 100.0]), threshold=3.0)
      0.2
    """
    tensors = [scores] if isinstance(scores, torch.Tensor) else list(scores)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("scores must be a tensor or a non-empty sequence of tensors")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    like = tensors[0]
    flat = torch.cat([_backend.local(t).detach().reshape(-1).to(_backend.local(like).device) for t in tensors])
    n = int(_backend.total(torch.tensor([flat.numel()], device=flat.device), like))
    if n == 0:
        raise ValueError("scores are empty")
    mean = _backend.total(flat.sum(), like) / n  # flat.mean() in one process, bit for bit
    above = _backend.total((flat > mean * threshold).sum(), like)
    return float(above) / n


def owl(outlier_ratios: Sequence[float], amount: float, *, lam: float = 0.08) -> list[float]:
    """OWL's per-block amounts: blocks with more outliers pruned less, the mean amount unchanged.

    The ratios are min-max scaled to ``[0, 2 * lam]``, centred, and added to the density
    ``1 - amount``; a block's amount is one minus its density. Equal ratios give ``amount``
    everywhere.

    Args:
      outlier_ratios: one :func:`outlier_ratio` per block (fractions or percents: scaling cancels).
      amount: the mean fraction to prune, in ``[0, 1]``.
      lam: OWL's ``lambda``, the largest deviation from ``amount``.

    Returns:
      One amount per block.

    Raises:
      ValueError: no ratios, a non-finite one, ``amount`` or ``lam`` out of range, or a resulting
        amount outside ``[0, 1]`` (``lam`` too large for ``amount``).

    Example:
      >>> [round(a, 3) for a in owl([0.01, 0.02, 0.03], 0.5, lam=0.1)]
      [0.6, 0.5, 0.4]
    """
    ratios = [float(r) for r in outlier_ratios]
    if not ratios or not all(math.isfinite(r) for r in ratios):
        raise ValueError(f"outlier_ratios must be a non-empty sequence of finite numbers, got {outlier_ratios!r}")
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not 0.0 <= float(amount) <= 1.0:
        raise ValueError(f"amount must be a float in [0, 1] for OWL, got {amount!r}")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be a float in [0, 1], got {lam!r}")
    low, high = min(ratios), max(ratios)
    if high == low:
        return [float(amount)] * len(ratios)
    scaled = [(r - low) * (1.0 / (high - low) * lam * 2) for r in ratios]
    mean = math.fsum(scaled) / len(scaled)
    amounts = [1.0 - (s - mean + (1.0 - float(amount))) for s in scaled]
    bad = [(i, a) for i, a in enumerate(amounts) if not 0.0 <= a <= 1.0]
    if bad:
        raise ValueError(
            f"OWL with amount={amount} and lam={lam} gives block {bad[0][0]} the amount {bad[0][1]:.4f}, "
            "outside [0, 1]: lower lam"
        )
    return amounts
