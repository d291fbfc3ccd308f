"""Run K subnetworks at once: one ``vmap`` of :func:`funcprune.functional_call` over stacked trees.

Stack masks (K masks of one model), params (K models), or both (K independent subnetworks) with
:func:`funcprune.stack` or the ``masks_for_*`` functions, then run them with
:func:`stacked_call`, or vectorize your own loss (and its ``torch.func.grad``) with
:func:`vmap_stacked`. Modules with state (BatchNorm running statistics) go through
:func:`call_with_buffers`, which returns the updated buffers instead of mutating anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.modules.batchnorm import _NormBase

from . import _pytree
from ._batched_conv import routed
from ._errors import shape_mismatch
from ._layout import Layout
from ._layout import layout as _layout
from ._pytree import Tree
from .call import functional_call

__all__ = ["vmap_stacked", "stacked_call", "call_with_buffers"]

_STACKED = {"masks": (None, 0), "params": (0, None), "both": (0, 0)}
_CONV = ("auto", "torch")


def _check_conv(conv: str) -> None:
    if conv not in _CONV:
        raise ValueError(f"conv must be one of {_CONV}, got {conv!r}")


def _vmap(fn: Callable, in_dims: tuple, chunk_size: int | None, randomness: str, conv: str) -> Callable:
    vmapped = torch.func.vmap(fn, in_dims=in_dims, chunk_size=chunk_size, randomness=randomness)
    if conv == "torch":
        return vmapped

    def run(*args: Any) -> Any:
        with routed():
            return vmapped(*args)

    return run


def vmap_stacked(
    fn: Callable,
    argnums: int | Sequence[int] = 1,
    *,
    chunk_size: int | None = None,
    randomness: str = "error",
    conv: str = "torch",
) -> Callable:
    """``fn`` vectorized over the stacked positional arguments ``argnums``; the others are shared.

    ``vmap_stacked(loss, argnums=(0, 1))(params, masks, x, y)`` is ``torch.func.vmap`` of
    ``loss`` with ``in_dims=(0, 0, None, None)``: item ``k`` of the result is
    ``loss(unstack(params)[k], unstack(masks)[k], x, y)``. ``fn`` may be a loss, or its
    ``torch.func.grad`` / ``grad_and_value``.

    Args:
      fn: the function to vectorize.
      argnums: index (or indices) of the positional arguments stacked along dim 0.
      chunk_size: run at most this many of the K items at once (``vmap``'s ``chunk_size``): less
        memory, and on CPUs a working set that stays in cache.
      randomness: ``vmap``'s option: ``"different"`` gives each subnetwork its own dropout.
      conv: ``"torch"`` (the default, here and in :func:`stacked_call`) keeps torch's batching
        rule for ``conv2d`` with K stacked weights, one grouped conv; ``"auto"`` routes it through
        ``funcprune._batched_conv`` (one wide conv for a shared input, K plain convs on CPU).
        Results agree to float rounding. Why ``"torch"`` by default (LeNet, K=32, 2-core CPU,
        ``benchmarks/multi_mask.py``): ``"auto"`` won only the unchunked forward on a quiet machine
        (0.87x torch's time), about tied at ``chunk_size=8`` (0.97x), lost at ``chunk_size=4`` (1.09x) and under
        ``grad`` (1.05x; the backward convs are torch's either way), and lost everywhere on a busy
        machine (1.2-2.3x); torch's rule also needs no ``TorchFunctionMode`` around the call.

    Returns:
      The vectorized function, with outputs stacked along dim 0.

    Raises:
      ValueError: for an unknown ``conv`` or no ``argnums``; when called, for an ``argnums``
        index out of range for the given arguments.

    Example:
      >>> f = vmap_stacked(lambda w, x: (w * x).sum(), argnums=0)
      >>> f(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([2.0, 3.0]))
      tensor([2., 3.])
    """
    _check_conv(conv)
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not argnums:
        raise ValueError("argnums must name at least one stacked argument")

    def run(*args: Any) -> Any:
        bad = [i for i in argnums if not -len(args) <= i < len(args)]
        if bad:
            raise ValueError(f"argnums {bad} out of range for {len(args)} positional arguments")
        stacked = {i % len(args) for i in argnums}
        in_dims = tuple(0 if i in stacked else None for i in range(len(args)))
        return _vmap(fn, in_dims, chunk_size, randomness, conv)(*args)

    return run


def stacked_call(
    module: torch.nn.Module,
    params: Tree,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    masks: Tree | None = None,
    stacked: str = "masks",
    chunk_size: int | None = None,
    randomness: str = "error",
    conv: str = "torch",
) -> Any:
    """Outputs of K subnetworks in one ``vmap`` of :func:`funcprune.functional_call`.

    Args:
      module: the model (unchanged).
      params: params tree, stacked (leading dim K) when ``stacked`` is ``"params"`` or ``"both"``.
      args, kwargs: the forward's inputs, shared by the K subnetworks.
      masks: masks tree, stacked when ``stacked`` is ``"masks"`` or ``"both"``.
      stacked: which of ``params`` / ``masks`` is stacked: ``"masks"``, ``"params"`` or ``"both"``.
      chunk_size: at most this many subnetworks at once (see :func:`vmap_stacked`).
      randomness: ``vmap``'s randomness option (``"different"``: dropout differs per subnetwork).
      conv: how convolutions run over K weights: ``"torch"`` (default) or ``"auto"``; see
        :func:`vmap_stacked` for the measurements behind the default.

    Returns:
      The module's output with a leading dim K.

    Raises:
      ValueError: for an unknown ``stacked`` or ``conv``; a stacked leaf whose shape is not
        ``(K, *tensor.shape)`` (e.g. unstacked masks) or whose K differs from the others (naming
        the leaf); a norm layer in train mode with running statistics (BatchNorm), which would
        update its buffers in place: use :func:`call_with_buffers` under :func:`vmap_stacked`.
      TypeError: a list of K trees instead of one stacked tree (use :func:`funcprune.stack`).

    Example:
      >>> lin = torch.nn.Linear(3, 1)
      >>> masks = {"weight": torch.tensor([[[True, True, True]], [[False, False, False]]])}
      >>> out = stacked_call(lin, dict(lin.named_parameters()), (torch.ones(5, 3),), masks=masks)
      >>> out.shape, torch.allclose(out[1], lin.bias.expand(5, 1))
      (torch.Size([2, 5, 1]), True)
    """
    if stacked not in _STACKED:
        raise ValueError(f"stacked must be one of {list(_STACKED)}, got {stacked!r}")
    _check_conv(conv)
    in_dims = _STACKED[stacked]
    layout = _layout(module)
    if stacked in ("masks", "both"):
        if masks is None:
            raise ValueError(f"stacked={stacked!r} needs stacked masks: pass masks=funcprune.stack([...])")
        _check_stacked(masks, "masks", layout)
    if stacked in ("params", "both"):
        _check_stacked(params, "params", layout)
    _check_no_running_stats(module, params if stacked in ("params", "both") else None)

    def one(p: Tree, m: Tree | None) -> Any:
        return functional_call(module, p, args, kwargs, masks=m)

    return _vmap(one, in_dims, chunk_size, randomness, conv)(params, masks)


def _check_stacked(tree: Tree, what: str, layout: Layout) -> None:
    """Raise unless every leaf of ``tree`` is its tensor's shape with one leading K (before vmap's own error)."""
    if isinstance(tree, (list, tuple)) and tree and all(isinstance(t, Mapping) for t in tree):
        raise TypeError(
            f"stacked_call takes one stacked {what} tree (a leading dim K on every leaf), got a "
            f"{type(tree).__name__} of {len(tree)} {what} trees: pass funcprune.stack({what}) instead"
        )
    size, first = None, None
    for name, leaf in _pytree.named_leaves(tree).items():
        ref = layout.tensors.get(name + "_orig" if name in layout.pruned else name)
        if ref is None:
            continue  # not a tensor of the module: functional_call names it
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{name}: {what} leaf must be a tensor, got {type(leaf).__name__}")
        shape = tuple(ref.shape)
        if leaf.dim() != ref.dim() + 1 or tuple(leaf.shape[1:]) != shape:
            hint = (
                " (the tensor's own shape: not stacked; stack K of them with funcprune.stack, or run one with "
                "funcprune.functional_call)"
                if tuple(leaf.shape) == shape
                else ""
            )
            raise shape_mismatch(
                f"stacked {what} leaf",
                leaf.shape,
                None,
                f"(K, *{shape})",
                name=name,
                note=f" with a leading stack dim K{hint}",
            )
        if size is not None and leaf.shape[0] != size:
            raise ValueError(
                f"{name}: stacked {what} leaf has leading dim K={leaf.shape[0]}, but {first!r} has K={size}"
            )
        size, first = leaf.shape[0], name


def _check_no_running_stats(module: torch.nn.Module, stacked_params: Tree | None) -> None:
    """BatchNorm (any norm with running stats) in train mode writes its buffers in place, which vmap refuses."""
    given = set(_pytree.named_leaves(stacked_params)) if stacked_params is not None else set()
    for prefix, sub in module.named_modules():
        if isinstance(sub, _NormBase) and sub.training and sub.running_mean is not None:
            name = f"{prefix}.running_mean" if prefix else "running_mean"
            if name not in given:
                raise ValueError(
                    f"{prefix or type(sub).__name__} ({type(sub).__name__}) is in train mode and would "
                    f"update its running statistics in place, which vmap cannot do: run "
                    f"funcprune.call_with_buffers under funcprune.vmap_stacked with stacked buffers "
                    f"(each subnetwork then updates its own), or call module.eval()"
                )


def call_with_buffers(
    module: torch.nn.Module,
    params: Tree,
    buffers: Tree,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    masks: Tree | None = None,
) -> tuple[Any, Tree]:
    """Run ``module`` on ``params`` and ``buffers``; return its output and the updated buffers.

    A pure version of a stateful forward: the buffers are copied first, so a BatchNorm in train
    mode updates the copies (returned, shaped like ``buffers``) and never ``buffers`` itself.
    Under ``vmap`` with stacked buffers every subnetwork updates its own statistics; in eval mode
    buffers can be shared (unstacked) and come back unchanged.

    Args:
      module: the model (unchanged).
      params: params tree (masked by ``masks``).
      buffers: buffers tree named like ``module.named_buffers()``.
      args, kwargs: the forward's inputs.
      masks: masks over some of the params.

    Returns:
      ``(output, new_buffers)``.

    Raises:
      ValueError: for a name in both ``params`` and ``buffers``.

    Example:
      >>> bn = torch.nn.BatchNorm1d(2)
      >>> buffers = {n: b for n, b in bn.named_buffers()}
      >>> out, new = call_with_buffers(bn, dict(bn.named_parameters()), buffers, (torch.randn(4, 2),))
      >>> int(new["num_batches_tracked"]), int(buffers["num_batches_tracked"])
      (1, 0)
    """
    named_params = _pytree.named_leaves(params)
    named_buffers = {name: leaf.clone() for name, leaf in _pytree.named_leaves(buffers).items()}
    both = [name for name in named_buffers if name in named_params]
    if both:
        raise ValueError(f"name(s) {both} are in both params and buffers")
    out = functional_call(module, {**named_params, **named_buffers}, args, kwargs, masks=masks)
    return out, _pytree.like(buffers, named_buffers)
