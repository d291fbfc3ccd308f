"""Pruning under ``torch.distributed``: training helpers for FSDP2 and DDP, sharded mask checkpoints.

Masks are applied where the parameters live: on FSDP2's sharded parameters (DTensors) each rank
zeroes the pruned entries of its local shard with its local mask shard, with no communication and
no full mask on any rank. See ``docs/distributed.md`` for the supported recipes.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch

from . import _pytree
from ._dtensor import check_placements as _check_placements
from ._dtensor import is_dtensor as _is_dtensor
from ._dtensor import local as _local
from ._errors import shape_mismatch
from ._layout import reparametrized
from ._pytree import Tree

if TYPE_CHECKING:  # FSDP2 is looked up in sys.modules at run time, never imported
    from torch.distributed.fsdp import FSDPModule

__all__ = [
    "apply_masks_",
    "mask_grads_",
    "keep_pruned",
    "KeepPruned",
    "broadcast_masks_",
    "save_masks_dcp",
    "load_masks_dcp",
]


# ---------------------------------------------------------------------------------------------
# Training: masks applied in place to (sharded) params and grads, kept through optimizer steps
# ---------------------------------------------------------------------------------------------


def _check_pair(name: str, param: torch.Tensor, mask: torch.Tensor, what: str = "param") -> None:
    """A mask fits ``param``: same global shape and, for DTensors, the same mesh and placements."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: mask must be a tensor, got {type(mask).__name__}")
    if mask.shape != param.shape:
        raise shape_mismatch("mask", mask.shape, f"the {what}", param.shape, name=name)
    p_dt, m_dt = _is_dtensor(param), _is_dtensor(mask)
    if p_dt != m_dt:
        raise ValueError(
            f"{name}: the {what} is a {'DTensor' if p_dt else 'plain tensor'} but its mask is a "
            f"{'DTensor' if m_dt else 'plain tensor'}; a sharded param needs a DTensor mask with its "
            f"mesh and placements (a full mask on every rank would leave its shard)"
        )
    if _is_dtensor(param) and _is_dtensor(mask):  # both or neither: checked above
        _check_placements(name, param)
        if mask.device_mesh != param.device_mesh:
            raise ValueError(f"{name}: mask is on {mask.device_mesh} but the {what} is on {param.device_mesh}")
        if tuple(mask.placements) != tuple(param.placements):
            raise ValueError(
                f"{name}: mask has placements {tuple(mask.placements)} but the {what} has {tuple(param.placements)}"
            )
        if mask.to_local().shape != param.to_local().shape:
            raise shape_mismatch(
                "local mask shard", mask.to_local().shape, f"the local {what} shard", param.to_local().shape, name=name
            )


def _pairs(params: Tree, masks: Tree | None) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, param, mask)`` for every masked leaf, all checked before anything changes."""
    if masks is None:
        return []
    named = _pytree.named_leaves(params)
    named_masks = _pytree.lookup(named, masks, "masks")
    out = []
    for name, mask in named_masks.items():
        param = named[name]
        if not isinstance(param, torch.Tensor):
            raise TypeError(f"{name}: param must be a tensor, got {type(param).__name__}")
        _check_pair(name, param, mask)
        out.append((name, param, mask))
    return out


def _zero_pruned(target: torch.Tensor, mask: torch.Tensor) -> None:
    local, keep = _local(target), _local(mask)
    if keep.dtype != torch.bool:
        keep = keep != 0
    local.masked_fill_(keep.logical_not(), 0)  # exact zeros, also where the value is inf or NaN


def _fsdp_owners(params: Sequence[torch.Tensor]) -> list[torch.nn.Module]:
    """The FSDP2 modules (``fully_shard``) whose sharded parameters include one of ``params``.

    FSDP2 keeps the all-gathered (unsharded) parameters of the root module (by default) and of
    ``reshard_after_forward=False`` modules after their forward; a no-grad forward (an evaluation)
    has no backward to reshard them, and the next forward reuses them: zeros written into the
    shards are not seen until that module reshards. ``fully_shard`` registers each module's state in torch's
    composable-API registry (the only way from a parameter back to its module); a torch whose
    state lacks the param groups gets every FSDP2 module (resharding one that is sharded is a
    no-op, and resharding never communicates).
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not params:
        return []
    from torch.distributed._composable_state import _module_state_mapping

    wanted = {id(p) for p in params}
    owners = []
    for module in list(_module_state_mapping.keys()):
        if not isinstance(module, fsdp.FSDPModule):
            continue
        groups = getattr(module._get_fsdp_state(), "_fsdp_param_groups", None)
        if groups is None or any(
            id(getattr(fsdp_param, "sharded_param", None)) in wanted
            for group in groups
            for fsdp_param in group.fsdp_params
        ):
            owners.append(module)
    return owners


def _reshard(owners: Sequence[torch.nn.Module]) -> None:
    """Drop the unsharded copies ``owners`` hold, so their next forward all-gathers the (masked) shards."""
    for module in owners:
        cast("FSDPModule", module).reshard()  # _fsdp_owners returns FSDP2 modules only


@torch.no_grad()
def apply_masks_(params: Tree, masks: Tree | None) -> Tree:
    """Zero the pruned entries of ``params`` in place, shard by shard, with no communication.

    The in-place twin of :func:`funcprune.apply_masks` for params a wrapper owns (FSDP2's sharded
    parameters, a DDP module's parameters): each rank writes zeros into its local shard where its
    local mask shard is False. Entries become exactly 0 (also where they were inf or NaN).

    The next forward is masked: FSDP2 modules that still hold all-gathered copies of the masked
    params (the root module by default and ``reshard_after_forward=False`` modules, after a
    forward with no backward yet, e.g. an evaluation under ``torch.no_grad()``) are resharded
    (``FSDPModule.reshard()``: the copies are freed, nothing is communicated), so their next
    forward all-gathers the masked shards.

    Args:
      params: tree of tensors, usually ``dict(model.named_parameters())``; DTensors (FSDP2) or
        plain tensors.
      masks: masks over some of the names (bool, or float with 0 = pruned), or None (nothing
        happens). A DTensor param needs a DTensor mask with the same mesh and placements.

    Returns:
      ``params`` itself (its tensors changed in place).

    Raises:
      KeyError: a mask name that is not in ``params``.
      TypeError, ValueError: a mask that is not a tensor, or whose shape, kind (DTensor or not),
        mesh, placements or local shard shape differ from its param's (naming the leaf); nothing
        is changed then.

    Example:
      >>> params = {"w": torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))}
      >>> _ = apply_masks_(params, {"w": torch.tensor([True, False, True])})
      >>> params["w"].data
      tensor([1., 0., 3.])
    """
    pairs = _pairs(params, masks)
    for _, param, mask in pairs:
        _zero_pruned(param, mask)
    _reshard(_fsdp_owners([param for _, param, _ in pairs if _is_dtensor(param)]))
    return params


@torch.no_grad()
def mask_grads_(params: Tree, masks: Tree | None) -> Tree:
    """Zero the pruned entries of every ``param.grad`` in place, shard by shard, with no communication.

    Params without a gradient are skipped. Call it after the backward (FSDP2 has reduce-scattered
    the gradients into sharded DTensors by then) and before the optimizer step.

    Args:
      params: tree of tensors whose ``.grad`` is masked.
      masks: masks over some of the names, as in :func:`apply_masks_`.

    Returns:
      ``params`` itself.

    Raises:
      KeyError, TypeError, ValueError: as :func:`apply_masks_` (a gradient whose placements
        differ from its mask's too); nothing is changed then.

    Example:
      >>> w = torch.nn.Parameter(torch.ones(3))
      >>> (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
      >>> _ = mask_grads_({"w": w}, {"w": torch.tensor([True, False, True])})
      >>> w.grad
      tensor([1., 0., 3.])
    """
    pairs = [(name, param.grad, mask) for name, param, mask in _pairs(params, masks) if param.grad is not None]
    for name, grad, mask in pairs:
        _check_pair(name, grad, mask, "gradient")
    for _, grad, mask in pairs:
        _zero_pruned(grad, mask)
    return params


class KeepPruned:
    """Optimizer hooks that keep pruned entries exactly zero through every ``optimizer.step()``.

    Made by :func:`keep_pruned`. Before each step the pruned entries of the gradients are zeroed
    (so momentum and Adam's moments see no gradient there); after it the pruned entries of the
    params are zeroed again (weight decay, momentum from before the pruning). All of it is local
    to each rank's shards.

    The pre-step hook runs inside ``optimizer.step()``: code that reads gradients before the step
    (``clip_grad_norm_``, ``GradScaler.unscale_``/``step``'s inf check) sees the pruned entries'
    gradients unless it calls :meth:`mask_grads` first (``keeper.mask_grads();
    clip_grad_norm_(...); optimizer.step()``). Optimizer hooks run in registration order: a post-step
    hook registered before this one (e.g. an EMA update) sees the params before the pruned entries
    are zeroed again; register such hooks after :func:`keep_pruned`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Tree, masks: Tree | None):
        self.optimizer = optimizer
        self.params = params
        self._masks = None
        self.update(masks)
        self._handles = [optimizer.register_step_pre_hook(self._pre), optimizer.register_step_post_hook(self._post)]

    @property
    def masks(self) -> Tree | None:
        """The masks in force (None before the first pruning)."""
        return self._masks

    def update(self, masks: Tree | None) -> None:
        """Put ``masks`` in force and zero the newly pruned params now, so the next forward is masked.

        Raises:
          KeyError, TypeError, ValueError: as :func:`apply_masks_`; ValueError for a masked param
            the optimizer does not step (e.g. a detached copy: its gradient would never be
            masked). The old masks stay in force.
        """
        stepped = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        for name, param, _ in _pairs(self.params, masks):  # check first
            if id(param) not in stepped:
                raise ValueError(
                    f"{name}: not a parameter of the optimizer; keep_pruned needs the parameters "
                    f"themselves (dict(model.named_parameters())), not copies"
                )
        apply_masks_(self.params, masks)
        self._masks = masks

    def mask_grads(self) -> None:
        """Zero the pruned entries of the gradients now (as the pre-step hook does), e.g. before gradient clipping.

        Raises:
          ValueError: a gradient whose layout differs from its mask's (naming the leaf).
        """
        mask_grads_(self.params, self._masks)

    def remove(self) -> None:
        """Remove the optimizer hooks (the params keep their zeros)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre(self, optimizer, args, kwargs) -> None:
        mask_grads_(self.params, self._masks)

    def _post(self, optimizer, args, kwargs) -> None:
        apply_masks_(self.params, self._masks)


def keep_pruned(optimizer: torch.optim.Optimizer, params: Tree, masks: Tree | None = None) -> KeepPruned:
    """Make a plain ``loss.backward(); optimizer.step()`` loop train a pruned model, also under FSDP2.

    Zeroes the pruned entries of ``params`` now, then hooks ``optimizer``: before each step the
    pruned gradient entries are zeroed, after it the pruned param entries. Under FSDP2 the params
    are the sharded DTensors ``fully_shard`` made and the masks DTensors with their placements
    (from :func:`funcprune.global_unstructured` on those params): each rank masks its own shards,
    nothing is communicated, and FSDP2's all-gather then carries zeros, so every forward is the
    masked model. The pruned entries lose their values (``pruned="zero"`` of
    :func:`funcprune.masked_update`).

    Args:
      optimizer: the optimizer stepping ``params``.
      params: tree of the parameters themselves, usually ``dict(model.named_parameters())``.
      masks: the initial masks, or None; change them with ``.update(masks)`` (e.g. at each step
        of a pruning schedule).

    Returns:
      A :class:`KeepPruned` handle (``.masks``, ``.update(masks)``, ``.remove()``).

    Raises:
      KeyError, TypeError, ValueError: as :func:`apply_masks_`, and ValueError for a masked param
        that ``optimizer`` does not step (naming it).

    Example:
      >>> layer = torch.nn.Linear(2, 2)
      >>> opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
      >>> keeper = keep_pruned(opt, dict(layer.named_parameters()), {"weight": torch.eye(2, dtype=torch.bool)})
      >>> layer(torch.ones(1, 2)).sum().backward(); opt.step()
      >>> layer.weight[0, 1].item(), layer.weight[1, 0].item()
      (0.0, 0.0)
    """
    return KeepPruned(optimizer, params, masks)


@torch.no_grad()
def broadcast_masks_(masks: Any, src: int = 0, group: Any | None = None) -> Any:
    """Copy rank ``src``'s masks to every rank, in place (for DDP, where every rank holds whole masks).

    For masks computed after ``DistributedDataParallel`` wrapped the module (DDP broadcasts
    buffers at construction, and before each forward only if the module had buffers then), or by
    a random method whose RNG differs across ranks.

    Args:
      masks: a module pruned by ``funcprune.compat`` or ``torch.nn.utils.prune`` (its
        ``<name>_mask`` buffers), or a tree of plain mask tensors.
      src: the rank whose masks win.
      group: the process group (None: the default one).

    Returns:
      ``masks`` itself.

    Raises:
      TypeError: a DTensor mask (sharded masks are already consistent: each rank owns its shard),
        or a leaf that is not a tensor (naming it).
    """
    import torch.distributed as dist

    named: dict[str, Any]  # user input, checked below
    if isinstance(masks, torch.nn.Module):
        named = {
            name + "_mask": sub._buffers[local + "_mask"] for name, (sub, local, _) in reparametrized(masks).items()
        }
    else:
        named = _pytree.named_leaves(masks)
    for name, mask in named.items():
        if not isinstance(mask, torch.Tensor) or _is_dtensor(mask):
            raise TypeError(
                f"{name}: broadcast_masks_ takes plain tensors, got "
                f"{'a DTensor' if _is_dtensor(mask) else type(mask).__name__}"
            )
    for mask in named.values():
        dist.broadcast(mask.view(torch.uint8) if mask.dtype == torch.bool else mask, src, group=group)
    return masks


# ---------------------------------------------------------------------------------------------
# Sharded mask checkpoints (torch.distributed.checkpoint): funcprune/_dcp.py
# ---------------------------------------------------------------------------------------------

from ._dcp import load_masks_dcp, save_masks_dcp  # noqa: E402
