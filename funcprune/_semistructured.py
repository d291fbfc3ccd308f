"""The layout ``torch.sparse.to_sparse_semi_structured`` expects, checked before converting.

Semi-structured sparsity runs on NVIDIA sparse tensor cores (CUDA, compute capability 8.0+). The
dense weight must be 2-D, contiguous, of a dtype the backend supports, with both sizes multiples
of the backend's minimum tile, and every row must hold the N:M pattern of its dtype: 2:4 for
16-bit floats and int8, 1:2 for float32 (TF32 kernels prune in pairs). Re-exported by
:mod:`funcprune.export`.
"""

from __future__ import annotations

import torch

from .patterns import satisfies_nm
from .select import as_keep


class SemiStructuredUnavailable(RuntimeError):
    """A weight cannot become a semi-structured sparse tensor here (device or layout), and why."""


def _backend():
    # _FORCE_CUTLASS is torch's own (private) switch; older releases without it default to CUTLASS
    semi = torch.sparse.SparseSemiStructuredTensor
    return (
        torch.sparse.SparseSemiStructuredTensorCUTLASS
        if getattr(semi, "_FORCE_CUTLASS", True)
        else torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    )


def semi_structured_pattern(dtype: torch.dtype) -> tuple[int, int]:
    """The N:M pattern ``(kept_per_group, group_size)`` for ``dtype``: ``(1, 2)`` for float32, else ``(2, 4)``.

    Example:
      >>> semi_structured_pattern(torch.float16)
      (2, 4)
    """
    return (1, 2) if dtype == torch.float32 else (2, 4)


def check_semi_structured(weight: torch.Tensor, mask: torch.Tensor | None = None) -> list[str]:
    """Every reason ``weight`` (masked by ``mask``) does not fit the semi-structured layout.

    Checks shape, contiguity, dtype, the backend's minimum tile and the row pattern of
    :func:`semi_structured_pattern`; it does not look at the device (see
    :func:`semi_structured_available`). Runs on any device, CPU included.

    Returns:
      A list of problems; empty when the layout is right.

    Example:
      >>> w = torch.tensor([[1.0, 0.0, 2.0, 0.0]] * 32, dtype=torch.float16).repeat(1, 16)
      >>> check_semi_structured(w)
      []
      >>> check_semi_structured(torch.ones(3, 4, dtype=torch.float16))[0]
      'shape (3, 4) is not a multiple of the (16, 16) tile of the cusparselt backend for torch.float16'
    """
    problems = []
    backend = _backend()
    if weight.dim() != 2:
        return [f"semi-structured sparsity needs a 2-D weight, got shape {tuple(weight.shape)}"]
    if not weight.is_contiguous():
        problems.append("the weight is not contiguous")
    limits = backend._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if limits is None:
        supported = ", ".join(str(d) for d in backend._DTYPE_SHAPE_CONSTRAINTS)
        problems.append(f"dtype {weight.dtype} is not supported by the {backend.BACKEND} backend ({supported})")
    else:
        rows, cols = limits.sparse_min_rows, limits.sparse_min_cols
        if weight.shape[0] % rows or weight.shape[1] % cols or not weight.shape[0] or not weight.shape[1]:
            problems.append(
                f"shape {tuple(weight.shape)} is not a multiple of the ({rows}, {cols}) tile of the "
                f"{backend.BACKEND} backend for {weight.dtype}"
            )
    kept_per_group, group_size = semi_structured_pattern(weight.dtype)
    keep = as_keep(weight, mask)
    kept = weight != 0 if keep is None else keep & (weight != 0)
    if weight.shape[1] % group_size:
        problems.append(f"{weight.shape[1]} columns do not split into groups of {group_size}")
    elif not bool(satisfies_nm(kept, kept_per_group, group_size, dim=1)):
        problems.append(f"rows do not hold the {kept_per_group}:{group_size} pattern {weight.dtype} needs")
    return problems


def semi_structured_available(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` runs semi-structured sparse kernels, with the reason when it does not.

    Example:
      >>> semi_structured_available(torch.device("cpu"))[0]
      False
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"semi-structured sparsity needs a CUDA device (sm80+), got {device}"
    if not torch.cuda.is_available():
        return False, "CUDA is not available in this torch build or machine"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return False, f"semi-structured sparsity needs compute capability 8.0+, {device} has {major}.{minor}"
    return True, ""


def to_semi_structured(weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``torch.sparse.to_sparse_semi_structured`` of ``weight * mask``, after checking the layout.

    Raises:
      SemiStructuredUnavailable: the device cannot run it or the layout is wrong; the message
        says which (catch it to skip cleanly, as :func:`funcprune.export.to_sparse` does).

    Example:
      >>> try:
      ...     to_semi_structured(torch.zeros(32, 64, dtype=torch.float16))
      ... except SemiStructuredUnavailable as err:
      ...     print(err)
      semi-structured sparsity needs a CUDA device (sm80+), got cpu
    """
    keep = as_keep(weight, mask)
    value = weight.detach() if keep is None else torch.where(keep, weight.detach(), 0)  # pruned NaN -> 0
    ok, reason = semi_structured_available(weight.device)
    if not ok:
        raise SemiStructuredUnavailable(reason)
    problems = check_semi_structured(value)
    if problems:
        raise SemiStructuredUnavailable("; ".join(problems))
    return torch.sparse.to_sparse_semi_structured(value.contiguous())
