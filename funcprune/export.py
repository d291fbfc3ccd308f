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
from typing import Any, NamedTuple

import torch
import torch.utils._pytree as torch_pytree

from . import _pytree
from ._layout import reparametrized
from ._masking import zeroed
from ._masks_io import load_masks, save_masks
from ._pytree import Include, Tree
from ._semistructured import (
    SemiStructuredUnavailable,
    check_semi_structured,
    semi_structured_available,
    semi_structured_pattern,
    to_semi_structured,
)
from .call import functional_call
from .select import as_keep

__all__ = [
    "LeafSize",
    "SizeReport",
    "size_report",
    "Finalized",
    "finalize",
    "Exported",
    "to_sparse",
    "Check",
    "verify",
    "SemiStructuredUnavailable",
    "check_semi_structured",
    "semi_structured_available",
    "semi_structured_pattern",
    "to_semi_structured",
    "save_masks",
    "load_masks",
]

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
    per_leaf: dict[str, LeafSize]


def _leaf_size(leaf: torch.Tensor, nnz: int) -> LeafSize:
    numel, item = leaf.numel(), leaf.element_size()
    rows = leaf.shape[0] if leaf.dim() >= 2 else 1
    return LeafSize(
        numel,
        nnz,
        dense=numel * item,
        coo=nnz * (max(leaf.dim(), 1) * _INDEX_BYTES + item),
        csr=(rows + 1) * _INDEX_BYTES + nnz * (_INDEX_BYTES + item),
        bitmask=math.ceil(numel / 8) + nnz * item,
    )


def size_report(params: Tree, masks: Tree | None = None) -> SizeReport:
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
    """What :func:`finalize` returns."""

    params: Tree
    """The pruned params: pruned entries are zero, no masks needed any more."""
    report: SizeReport


def finalize(params: Tree, masks: Tree | None) -> Finalized:
    """Make pruning permanent: params with pruned entries zeroed (``prune.remove``), and sizes.

    Pruned entries are exactly zero whatever they held (a pruned NaN or inf gives 0, not
    ``nan * 0``); kept entries are those of :func:`funcprune.apply_masks`.

    Returns:
      ``(params, report)``: detached copies of the params, same structure and dtypes, and a
      :class:`SizeReport` of their dense and sparse storage.

    Raises:
      KeyError: a masked name that is not a param. ValueError/TypeError: a mask of the wrong shape
      or type.

    Example:
      >>> out = finalize({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([False, True])})
      >>> out.params, out.report.nnz
      ({'w': tensor([0., 2.])}, 1)
    """
    named_masks = _pytree.lookup(_pytree.named_leaves(params), masks, "masks")
    dense = zeroed(params, masks)  # masked leaves are new tensors already; copy the others
    pruned = {name: value if name in named_masks else value.clone() for name, value in dense.items()}
    return Finalized(_pytree.like(params, pruned), size_report(params, masks))


class Exported(NamedTuple):
    """What :func:`to_sparse` returns."""

    params: Tree
    """Params with the converted leaves as sparse tensors, the others dense (pruned entries zeroed)."""
    skipped: dict[str, str]
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
      Pruned entries are never stored (zero when densified), even where they held NaN or inf.

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
    dense = zeroed(params, masks)
    out, skipped = {}, {}
    for name in named:
        value = out[name] = dense[name]
        if name not in named_masks or name not in wanted:
            continue
        try:
            out[name] = _convert(value, as_keep(value, named_masks[name], f"{name} mask"), layout)
        except (ValueError, SemiStructuredUnavailable) as err:
            skipped[name] = str(err)
    return Exported(_pytree.like(params, out), skipped)


class Check(NamedTuple):
    """What :func:`verify` returns."""

    ok: bool
    """Every exported leaf equals its masked dense value and the outputs match."""
    max_abs_diff: float
    """Largest absolute difference over every tensor of the outputs (0.0 without a module;
    ``inf`` where an output's shape or structure differs)."""
    mismatched: tuple[str, ...]
    """Leaves whose dense form differs from the masked dense param."""


def _densified(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and (value.layout != torch.strided or hasattr(value, "packed")):
        return value.to_dense()
    return value


def _equal(a: Any, b: torch.Tensor) -> bool:
    """``torch.equal``, with NaN equal to NaN (a kept NaN exports as NaN)."""
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    if torch.equal(a, b):
        return True
    both_nan = a.isnan() & b.isnan() if a.is_floating_point() or a.is_complex() else False
    return bool(((a == b) | both_nan).all())


def _tensor_gap(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> tuple[bool, float]:
    """``(allclose with NaN == NaN, largest |difference|)`` of one output tensor."""
    if actual.shape != expected.shape:
        return False, math.inf
    if not expected.is_floating_point() and not expected.is_complex():
        same = torch.equal(actual, expected)
        gap = (
            0.0
            if same or not expected.numel()
            else float((actual.to(torch.float64) - expected.to(torch.float64)).abs().max())
        )
        return same, gap
    actual = actual.to(expected.dtype)
    if not expected.numel():
        return True, 0.0
    equal = (actual == expected) | (actual.isnan() & expected.isnan())  # inf == inf, NaN == NaN: no gap
    gaps = torch.where(equal, 0.0, (actual - expected).abs()).nan_to_num(nan=math.inf)
    return torch.allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True), float(gaps.max())


def _outputs_gap(actual: Any, expected: Any, rtol: float, atol: float) -> tuple[bool, float]:
    """Compare two forward outputs leaf by leaf: tensors, and tuples/lists/dicts of them."""
    expected_leaves, expected_spec = torch_pytree.tree_flatten_with_path(expected)
    actual_leaves, actual_spec = torch_pytree.tree_flatten_with_path(actual)
    if expected_spec != actual_spec:
        return False, math.inf
    close, gap = True, 0.0
    for (path, want), (_, got) in zip(expected_leaves, actual_leaves):
        if isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor):
            leaf_close, leaf_gap = _tensor_gap(got, want, rtol, atol)
        elif isinstance(want, torch.Tensor) or isinstance(got, torch.Tensor):
            leaf_close, leaf_gap = False, math.inf
        else:
            try:
                leaf_close = bool(want == got)
            except Exception as err:  # e.g. an unregistered container holding tensors
                raise TypeError(
                    f"verify compares outputs made of tensors, tuples, lists and dicts; the "
                    f"output at {torch_pytree.keystr(path) or 'the top'} is a "
                    f"{type(want).__name__} it cannot compare"
                ) from err
            leaf_gap = 0.0 if leaf_close else math.inf
        close, gap = close and leaf_close, max(gap, leaf_gap)
    return close, gap


def verify(
    params: Tree,
    masks: Tree | None,
    exported: Tree,
    module: torch.nn.Module | None = None,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Check:
    """Check exported params against the masked dense model they came from.

    The reference is the masked dense params with pruned entries exactly zero (what
    :func:`finalize` returns), so a pruned NaN or inf, which :func:`funcprune.apply_masks` turns
    into NaN (``nan * 0``) but an export never stores, does not count as a difference. Every leaf
    of ``exported`` must densify to exactly its reference (a kept NaN equals NaN). With
    ``module``, ``module`` run on ``exported`` (:func:`funcprune.functional_call`) must match it run
    on the reference within ``rtol``/``atol`` (sparse kernels sum in another order); every tensor
    of the output is compared, so a forward may return a tensor or tuples, lists and dicts of them.

    Args:
      params, masks: the dense params and their masks the export came from.
      exported: the exported params (e.g. ``to_sparse(...).params``), named like ``params``.
      module: optional model to run on both; args, kwargs: its forward's inputs.
      rtol, atol: tolerances of the output comparison.

    Returns:
      :class:`Check`: ``(ok, max_abs_diff, mismatched)``.

    Raises:
      KeyError: a name of ``exported`` or ``masks`` that is not in ``params``.
      ValueError: ``module`` carries pruning hooks (compat or torch.nn.utils.prune): they would
        replace the exported weights by ``<name>_orig * <name>_mask``; pass an unpruned module.
      TypeError: an output leaf that is neither a tensor nor comparable with ``==``.

    Example:
      >>> params, masks = {"w": torch.tensor([[1.0, 2.0]])}, {"w": torch.tensor([[True, False]])}
      >>> verify(params, masks, to_sparse(params, masks, "coo").params).ok
      True
    """
    if module is not None and reparametrized(module):
        # Its pruning hooks would recompute each pruned weight from `<name>_orig * <name>_mask`
        # and never run the exported tensor: the check would pass whatever was exported.
        raise ValueError(
            f"verify needs a module without pruning hooks, but {sorted(reparametrized(module))} "
            f"of {type(module).__name__} are pruned: check an unpruned copy (e.g. "
            "funcprune.to_module(copy.deepcopy(module), masks={}))"
        )
    named_dense = zeroed(params, masks)
    named_exported = _pytree.lookup(named_dense, exported, "exported")
    mismatched = tuple(
        name for name, value in named_exported.items() if not _equal(_densified(value), named_dense[name])
    )
    diff, close = 0.0, True
    if module is not None:
        expected = functional_call(module, named_dense, args, kwargs)
        actual = functional_call(module, dict(named_exported), args, kwargs)
        close, diff = _outputs_gap(actual, expected, rtol, atol)
    return Check(close and not mismatched, diff, mismatched)
