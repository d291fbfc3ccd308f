"""Export: permanent pruned params, their size, and sparse tensors that compute the same outputs.

Export runs once after training, on real tensors, so unlike the mask functions it reads values
(``nonzero``, ``int`` counts): it is eager only.

* :func:`finalize` is ``torch.nn.utils.prune.remove`` for a params tree: the pruned values become
  the params, with a :class:`SizeReport` of dense versus sparse storage.
* :func:`to_sparse` turns masked leaves into ``torch.sparse`` COO or CSR tensors, or into
  ``torch.sparse.to_sparse_semi_structured`` tensors where the device supports them; leaves that
  cannot be converted stay dense and are listed with the reason, so the call never half-fails.
* :func:`verify` checks that the exported tensors equal the masked dense ones and, given a
  module and inputs, that the outputs match.
* :func:`save_masks` / :func:`load_masks` store masks on their own, one bit per entry.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, NamedTuple, Optional, Tuple

import torch

from . import _pytree
from ._pytree import Include, Tree
from .call import functional_call
from ._select import as_keep
from ._masks_io import load_masks, save_masks
from ._semistructured import (SemiStructuredUnavailable, check_semi_structured, semi_structured_available,
                              semi_structured_pattern, to_semi_structured)
from .tree import apply_masks

__all__ = ["LeafSize", "SizeReport", "size_report", "Finalized", "finalize", "Exported", "to_sparse", "Check", "verify",
           "SemiStructuredUnavailable", "check_semi_structured", "semi_structured_available",
           "semi_structured_pattern", "to_semi_structured", "save_masks", "load_masks"]

_INDEX_BYTES = 8  # torch.sparse indices are int64


class LeafSize(NamedTuple):
    """Storage of one leaf in each format, in bytes."""

    numel: int
    nnz: int
    dense: int
    coo: int
    csr: int
    bitmask: int


class SizeReport(NamedTuple):
    """Dense versus sparse storage of a params tree, in bytes."""

    dense_bytes: int
    """Every leaf stored dense."""
    sparse_bytes: int
    """Every masked leaf in its smallest format (dense, COO, CSR or bitmask), others dense."""
    nnz: int
    """Entries kept (unmasked leaves count in full)."""
    total: int
    """All entries."""
    per_leaf: Dict[str, LeafSize]


def _leaf_size(leaf: torch.Tensor, nnz: int) -> LeafSize:
    numel, item = leaf.numel(), leaf.element_size()
    rows = leaf.shape[0] if leaf.dim() >= 2 else 1
    return LeafSize(numel, nnz, dense=numel * item, coo=nnz * (max(leaf.dim(), 1) * _INDEX_BYTES + item),
                    csr=(rows + 1) * _INDEX_BYTES + nnz * (_INDEX_BYTES + item),
                    bitmask=math.ceil(numel / 8) + nnz * item)


def size_report(params: Tree, masks: Optional[Tree] = None) -> SizeReport:
    """Bytes of ``params`` stored dense and with each masked leaf in its smallest sparse format.

    COO stores an int64 index per dim and the value for each kept entry; CSR (rows = dim 0, the
    rest flattened) stores ``rows + 1`` int64 row pointers plus an int64 column index and the
    value per kept entry; a bitmask stores one bit per entry plus the kept values.

    Example:
      >>> r = size_report({"w": torch.zeros(4, 4)}, {"w": torch.eye(4, dtype=torch.bool)})
      >>> r.dense_bytes, r.sparse_bytes, r.per_leaf["w"].csr
      (64, 18, 88)
    """
    named = _pytree.named_leaves(params)
    named_masks = _pytree.lookup(named, masks, "masks")
    per_leaf, dense, sparse, nnz = {}, 0, 0, 0
    for name, leaf in named.items():
        keep = as_keep(leaf, named_masks.get(name), f"{name} mask")
        kept = leaf.numel() if keep is None else int(keep.sum())
        size = _leaf_size(leaf, kept)
        per_leaf[name] = size
        dense += size.dense
        sparse += size.dense if keep is None else min(size.dense, size.coo, size.csr, size.bitmask)
        nnz += kept
    return SizeReport(dense, sparse, nnz, sum(leaf.numel() for leaf in named.values()), per_leaf)


class Finalized(NamedTuple):
    params: Tree
    """The pruned params: pruned entries are zero, no masks needed any more."""
    report: SizeReport


def finalize(params: Tree, masks: Optional[Tree]) -> Finalized:
    """Make pruning permanent: params with pruned entries zeroed (``prune.remove``), and sizes.

    Returns:
      ``(params, report)``: detached params of the same structure and dtypes, and a
      :class:`SizeReport` of their dense and sparse storage.

    Example:
      >>> out = finalize({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([False, True])})
      >>> out.params, out.report.nnz
      ({'w': tensor([0., 2.])}, 1)
    """
    pruned = _pytree.like(params, {name: p.detach().clone() for name, p in
                                   _pytree.named_leaves(apply_masks(params, masks)).items()})
    return Finalized(pruned, size_report(params, masks))


class Exported(NamedTuple):
    params: Tree
    """Params with the converted leaves as sparse tensors, the others dense (pruned entries zeroed)."""
    skipped: Dict[str, str]
    """Masked leaves left dense, with the reason."""


def _coo(value: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # Built from the mask, not from nonzero values: a kept entry that happens to be 0 stays stored.
    indices = keep.nonzero().t()
    return torch.sparse_coo_tensor(indices, value[keep], value.shape, is_coalesced=True, check_invariants=True)


def _convert(value: torch.Tensor, keep: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "coo":
        return _coo(value, keep)
    if layout == "csr":
        if value.dim() != 2:
            raise ValueError(f"CSR needs a 2-D tensor, got shape {tuple(value.shape)}")
        with warnings.catch_warnings():  # torch flags every CSR tensor as beta; nothing to act on
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            return _coo(value, keep).to_sparse_csr()
    return to_semi_structured(value, keep)


def to_sparse(params: Tree, masks: Tree, layout: str = "csr", *, include: Include = None) -> Exported:
    """Convert the masked leaves to sparse tensors holding exactly their kept entries.

    Args:
      params: pytree of tensors.
      masks: masks over some of the names; only masked leaves are converted.
      layout: ``"coo"`` (any shape), ``"csr"`` (2-D leaves, e.g. Linear weights; runs through
        ``torch.nn.functional.linear``) or ``"semi_structured"`` (2:4 on CUDA sm80+, see
        :func:`funcprune.export.to_semi_structured`).
      include: restrict the conversion to these masked leaves.

    Returns:
      :class:`Exported`: the params tree (converted leaves sparse, other masked leaves dense with
      pruned entries zeroed) and ``skipped``, ``{name: reason}`` for masked leaves left dense.

    Raises:
      ValueError: an unknown ``layout``. KeyError: unknown names.

    Example:
      >>> out = to_sparse({"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}, {"w": torch.eye(2, dtype=torch.bool)})
      >>> out.params["w"].layout, out.params["w"].values(), out.skipped
      (torch.sparse_csr, tensor([1., 4.]), {})
    """
    if layout not in ("coo", "csr", "semi_structured"):
        raise ValueError(f"layout must be 'coo', 'csr' or 'semi_structured', got {layout!r}")
    named = _pytree.named_leaves(params)
    named_masks = _pytree.lookup(named, masks, "masks")
    wanted = set(_pytree.selected(named, include)) if include is not None else set(named)
    dense = _pytree.named_leaves(apply_masks(params, masks))
    out, skipped = {}, {}
    for name, leaf in named.items():
        value = dense[name].detach()
        out[name] = value
        if name not in named_masks or name not in wanted:
            continue
        try:
            out[name] = _convert(value, as_keep(value, named_masks[name], f"{name} mask"), layout)
        except (ValueError, SemiStructuredUnavailable) as err:
            skipped[name] = str(err)
    return Exported(_pytree.like(params, out), skipped)


class Check(NamedTuple):
    ok: bool
    """Every exported leaf equals its masked dense value and the outputs match."""
    max_abs_diff: float
    """Largest absolute difference between the outputs (0.0 without a module)."""
    mismatched: Tuple[str, ...]
    """Leaves whose dense form differs from the masked dense param."""


def verify(params: Tree, masks: Optional[Tree], exported: Tree, module: Optional[torch.nn.Module] = None,
           args: Any = (), kwargs: Optional[Dict[str, Any]] = None, *, rtol: float = 1e-5,
           atol: float = 1e-5) -> Check:
    """Check exported params against the masked dense model they came from.

    Every sparse leaf of ``exported`` must densify to exactly ``apply_masks(params, masks)``;
    with ``module``, ``module`` run on ``exported`` must match :func:`funcprune.functional_call`
    on ``(params, masks)`` within ``rtol``/``atol`` (sparse kernels sum in another order).

    Example:
      >>> params, masks = {"w": torch.tensor([[1.0, 2.0]])}, {"w": torch.tensor([[True, False]])}
      >>> verify(params, masks, to_sparse(params, masks, "coo").params).ok
      True
    """
    named_dense = _pytree.named_leaves(apply_masks(params, masks))
    named_exported = _pytree.lookup(named_dense, exported, "exported")
    mismatched = tuple(name for name, value in named_exported.items()
                       if not torch.equal(value.to_dense() if value.layout != torch.strided or
                                          hasattr(value, "packed") else value, named_dense[name]))
    diff = 0.0
    if module is not None:
        expected = functional_call(module, params, args, kwargs, masks=masks)
        actual = torch.func.functional_call(module, dict(named_exported), args, kwargs)
        diff = float((actual.to(expected.dtype) - expected).abs().max()) if expected.numel() else 0.0
        close = torch.allclose(actual.to(expected.dtype), expected, rtol=rtol, atol=atol)
    else:
        close = True
    return Check(close and not mismatched, diff, mismatched)
