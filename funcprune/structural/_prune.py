"""``prune_groups``: masks that remove whole channels of coupled groups, ranked by group importance."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeGuard, cast

import torch

from .. import _amount, _pytree, select
from .._amount import Amount, is_concrete
from .._pytree import Tree
from ._types import Group, Member

__all__ = ["prune_groups", "group_importance"]

Importance = str | Callable[[torch.Tensor], torch.Tensor]
Count = int | torch.Tensor

_IMPORTANCE = {
    # one row per channel: (channels, entries of that channel in this member)
    "l2": lambda rows: rows.square().sum(1),
    "l1": lambda rows: rows.abs().sum(1),
}


def _member_rows(t: torch.Tensor, member: Member, channels: int) -> torch.Tensor:
    """``t``'s share of a group as ``(channels, entries per channel)``: row ``c`` holds every entry of channel ``c``."""
    part = t.narrow(member.dim, member.offset, channels * member.unit)
    return part.movedim(member.dim, 0).reshape(channels, -1)


def channel_any(keep: torch.Tensor, member: Member, channels: int) -> torch.Tensor:
    """Per channel of ``member``, whether any entry of its slice of the bool ``keep`` survives."""
    part = keep.narrow(member.dim, member.offset, channels * member.unit)
    others = tuple(d for d in range(keep.dim()) if d != member.dim)
    if others and is_concrete(part) and part.dtype == torch.bool:
        # any() over several dims runs element by element; a max over the bytes is vectorized (10-100x)
        live = part.view(torch.uint8).amax(dim=others).bool()
    else:
        live = part.any(dim=others) if others else part
    return live.reshape(channels, member.unit).any(1)


def _param_members(group: Group) -> list[Member]:
    return [m for m in group.members if not m.buffer]


def describe(index: int, group: Group) -> str:
    return f"group {index} ({group.kind}, {group.channels} channels)"


def check_groups(
    groups: Sequence[Group], shapes: dict[str, tuple[int, ...]], what: str = "params", buffers: bool = False
) -> list[Group]:
    """The groups as a list, each member's dim made non-negative, after checking them against ``shapes``.

    Args:
      groups: the groups (from :func:`funcprune.structural.groups` or written by hand).
      shapes: ``{name: shape}`` of the tensors the members name.
      what: what ``shapes`` holds, for messages.
      buffers: whether buffer members are checked too (else they are passed through unchecked).

    Raises:
      TypeError: an entry that is not a :class:`Group`, or a member that is not a :class:`Member`.
      KeyError: a member naming a tensor not in ``shapes``.
      ValueError: ``channels`` or ``pools`` not positive, ``pools`` not dividing ``channels``, a
        member's channels reaching past the end of its dim, or a group without param members.
      IndexError: a member's dim out of range.
    """
    if isinstance(groups, Group) or not isinstance(groups, (list, tuple)):
        raise TypeError(f"groups must be a list of Group, got {type(groups).__name__}")
    out = []
    for i, group in enumerate(groups):
        if not isinstance(group, Group):
            raise TypeError(f"groups[{i}] must be a funcprune.structural.Group, got {type(group).__name__}")
        c, pools = group.channels, group.pools
        for field, value in (("channels", c), ("pools", pools), ("min_channels", group.min_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if field == "min_channels" else 1):
                raise ValueError(f"{describe(i, group)}: {field} must be a positive int, got {value!r}")
        if c % pools:
            raise ValueError(f"{describe(i, group)}: pools={pools} does not divide channels={c}")
        if not _param_members(group):
            raise ValueError(f"{describe(i, group)} has no parameter member")
        members = []
        for m in group.members:
            if not isinstance(m, Member):
                raise TypeError(f"{describe(i, group)}: member {m!r} is not a funcprune.structural.Member")
            if m.buffer and not buffers:
                members.append(m)
                continue
            if m.name not in shapes:
                raise KeyError(f"{describe(i, group)}: member {m.name!r} is not among the {what}")
            shape = shapes[m.name]
            try:
                dim = select.check_dim(m.dim, shape)
            except (TypeError, IndexError) as err:
                raise type(err)(f"{describe(i, group)}: member {m.name!r}: {err}") from err
            if not isinstance(m.unit, int) or m.unit < 1 or not isinstance(m.offset, int) or m.offset < 0:
                raise ValueError(
                    f"{describe(i, group)}: member {m.name!r} needs offset >= 0 and unit >= 1, "
                    f"got offset={m.offset!r}, unit={m.unit!r}"
                )
            if m.offset + c * m.unit > shape[dim]:
                raise ValueError(
                    f"{describe(i, group)}: member {m.name!r} dim {dim} has size {shape[dim]} "
                    f"(shape {tuple(shape)}) but the group needs offset {m.offset} + {c} channels "
                    f"x unit {m.unit} = {m.offset + c * m.unit}"
                )
            members.append(m._replace(dim=dim))
        out.append(group._replace(members=tuple(members)))
    return out


def group_importance(
    group: Group,
    values: dict[str, torch.Tensor],
    importance: Importance = "l2",
    keeps: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """One importance per channel of ``group``: the sum over its param members of each channel's norm.

    ``"l2"`` is DepGraph's group L2 importance: the sum over members of the squared L2 norm of each
    channel's slice; ``"l1"`` the sum of absolute values; a callable ``f(rows) -> (channels,)`` is
    applied to each member's ``(channels, entries per channel)`` matrix and summed. Entries pruned
    by ``keeps`` count as zero. Buffers never count.

    Args:
      group: a checked group (see :func:`prune_groups`).
      values: ``{name: tensor}``: the params, or scores in their place.
      importance: ``"l2"``, ``"l1"`` or a callable.
      keeps: prior bool masks by name.

    Returns:
      A float tensor of ``group.channels`` entries (float32 at least), on the values' device.

    Example:
      >>> from funcprune.structural import Group, Member
      >>> g = Group(2, (Member("w", 0), Member("b", 0)))
      >>> group_importance(g, {"w": torch.tensor([[3.0, 4.0], [1.0, 0.0]]), "b": torch.tensor([0.0, 2.0])})
      tensor([25.,  5.])
    """
    fn = _IMPORTANCE[importance] if isinstance(importance, str) else importance
    keeps = keeps or {}
    total = None
    for m in _param_members(group):
        t = values[m.name].detach()
        if not t.is_floating_point() or t.element_size() < 4:
            t = t.float()
        keep = keeps.get(m.name)
        if keep is not None:
            t = t.masked_fill(~keep, 0)
        if isinstance(importance, str):  # reduce in place over the other dims: no moved copy of the tensor
            part = t.narrow(m.dim, m.offset, group.channels * m.unit)
            others = [d for d in range(t.dim()) if d != m.dim]
            if not others:
                norm = part.square() if importance == "l2" else part.abs()
            elif m.dim == 0:
                norm = torch.linalg.vector_norm(part, 1 if importance == "l1" else 2, dim=others)
                norm = norm.square() if importance == "l2" else norm
            else:  # a norm over dims around the channel dim is 5-10x slower than a sum over (before, after)
                cube = part.reshape(math.prod(part.shape[: m.dim]), part.shape[m.dim], -1)
                norm = (cube.square() if importance == "l2" else cube.abs()).sum((0, 2))
            score = norm.reshape(group.channels, m.unit).sum(1)
        else:
            score = fn(_member_rows(t, m, group.channels))
        if not isinstance(score, torch.Tensor) or tuple(score.shape) != (group.channels,):
            raise ValueError(
                f"importance for member {m.name!r} must return one score per channel, shape "
                f"({group.channels},), got {getattr(score, 'shape', type(score).__name__)}"
            )
        total = score if total is None else total + score
    return cast(torch.Tensor, total)  # a checked group has a param member, so the loop set it


def _alive(group: Group, keeps: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Channels not pruned yet: a channel is gone when every param member has a prior mask that is
    all ``False`` over its slice (None: no prior masks over all the members, every channel alive)."""
    members = _param_members(group)
    if not all(m.name in keeps for m in members):
        return None
    alive = None
    for m in members:
        live = channel_any(keeps[m.name], m, group.channels)
        alive = live if alive is None else alive | live
    return alive


def _n_alive(alive: torch.Tensor | None, group: Group) -> Count:
    """Alive channels in the pool that has the fewest (an int for eager tensors)."""
    per = group.channels // group.pools
    if alive is None:
        return per
    n = alive.reshape(group.pools, per).sum(1).min()
    return int(n) if is_concrete(n) else n


def _floor_div(x: Count, d: int) -> Count:
    return x // d if isinstance(x, int) else torch.div(x, d, rounding_mode="floor")


def _clamp(x: Count, lo: Count, hi: Count) -> Count:
    if all(isinstance(v, int) for v in (x, lo, hi)):
        return min(max(x, lo), hi)
    x = torch.as_tensor(x)
    return torch.minimum(torch.maximum(x, torch.as_tensor(lo, device=x.device)), torch.as_tensor(hi, device=x.device))


def _constrained(k: Count, n: Count, group: Group, round_to: int) -> Count:
    """Channels to prune per pool after the constraints: the kept width (all pools together) a
    multiple of ``round_to`` (rounded up), at least ``min_channels``, never above what is alive."""
    pools = group.pools
    step = round_to // math.gcd(round_to, pools)  # per pool, so that pools * kept is a multiple of round_to
    kept = n - k
    kept = -_floor_div(-kept, step) * step  # rounded up
    kept = _clamp(kept, -(-group.min_channels // pools), n)
    return n - kept


def _select_channels(group: Group, imp: torch.Tensor, alive: torch.Tensor | None, k: Count) -> torch.Tensor:
    """Kept channels of ``group`` (bool, ``channels``) after dropping ``k`` of lowest importance in every pool."""
    shape = (group.pools, group.channels // group.pools)
    key = imp.reshape(shape)
    keep = select.prune_units(
        key,
        select.rows(shape, 0),
        k,
        key,
        lazy=False,
        what="channels",
        mask=None if alive is None else alive.reshape(shape),
    )
    return keep.reshape(-1)


def _spread(channel_keep: torch.Tensor, member: Member, shape: Sequence[int]) -> torch.Tensor:
    """A member's mask from the group's per-channel keep: a view of size 1 in every dim but the member's
    (broadcasts to the member's shape; two groups' masks of one tensor combine before any is expanded)."""
    c = channel_keep.shape[-1]
    size = shape[member.dim]
    line = channel_keep if member.unit == 1 else channel_keep.unsqueeze(-1).expand(c, member.unit).reshape(-1)
    before, after = member.offset, size - member.offset - c * member.unit
    if before or after:

        def ones(n: int) -> torch.Tensor:
            return torch.ones(n, dtype=torch.bool, device=channel_keep.device)

        line = torch.cat([ones(before), line, ones(after)])
    view = [1] * len(shape)
    view[member.dim] = size
    return line.view(view)


def prune_groups(
    params: Tree,
    groups: Sequence[Group],
    amount: Amount,
    *,
    importance: Importance = "l2",
    scope: str = "local",
    masks: Tree | None = None,
    round_to: int = 1,
    include_inexact: bool = False,
    scores: Tree | None = None,
) -> Tree:
    """Masks that remove whole channels of every group, the same channels in all of a group's members.

    A group's importance per channel sums, over its param members, each channel's norm
    (``importance="l2"``: DepGraph's group L2, the sum of squared L2 norms of the channel's slices;
    ``"l1"``: sums of absolute values; or a callable, see :func:`group_importance`). With
    ``scores`` (a tree such as :mod:`funcprune.saliency` returns) the scores stand in for the
    params in those norms (``importance="l1"`` then sums them).

    ``scope="local"``: ``amount`` of every group's alive channels go (a float: a fraction, rounded
    half to even as torch does; an int: a count per group). ``scope="global"``: one ranking over
    the channels of all groups of their importance divided by the mean importance of the group's
    alive channels (Torch-Pruning's ``"mean"`` normalizer, so groups of different widths and
    depths compete on one scale); ``amount`` is a fraction (or count) of all alive channels; each
    group then drops as many channels as the global ranking took from it, its lowest, under the
    constraints below, so the total may fall short of ``amount`` where a constraint binds.

    Constraints, per group: ``pools > 1`` (grouped convolutions, query heads per key/value group)
    prunes an equal count in every pool (a fraction of each pool; an int count or the global
    share is split evenly, rounded down); the kept width is rounded *up* to a multiple of
    ``round_to`` (never above what is alive) and kept at least ``min_channels``. Inexact groups
    (``exact=False``: a normalization across the channels) are left out unless
    ``include_inexact=True``. Channels pruned by ``masks`` in every param member of a group are
    not alive and stay pruned; ties go to the lower channel index.

    The result holds a full-shaped bool mask for every param member of the pruned groups, the
    consumers' input slices included, so that no zeroed channel carries a constant (a BatchNorm
    shift, a bias through ``sigmoid``) downstream: :func:`funcprune.structural.shrink` then gives
    exactly the masked model's outputs. A param in several groups gets the product of its masks;
    prior masks of other names are carried over. Buffer members get no mask.

    Pure: the ranking goes through :mod:`funcprune.select`; with ``scope="local"`` it runs under
    ``torch.func.vmap`` over a tensor of amounts and on ``meta`` tensors (``scope="global"`` too
    when the amount is a tensor: the global ranking is one selection over the concatenated
    channel scores, a few thousand entries).

    Args:
      params: pytree of tensors named like ``named_parameters()``.
      groups: the coupled groups (:func:`funcprune.structural.groups`).
      amount: float fraction in ``[0, 1]``, int count, or 0-d tensor.
      importance: ``"l2"`` (default), ``"l1"`` or a callable (see :func:`group_importance`).
      scope: ``"local"`` (per group) or ``"global"`` (one ranking across groups).
      masks: prior masks over some of the names.
      round_to: the kept width of every group is a multiple of this (e.g. 8 for tensor cores).
      include_inexact: prune inexact groups too.
      scores: importance scores over some of the names (replacing the params in the norms).

    Returns:
      A masks tree shaped like ``params``.

    Raises:
      TypeError: ``params``, ``masks`` or ``scores`` is a module, not a tree of tensors.
      ValueError: a bad ``amount``, ``scope``, ``importance`` or ``round_to``, a group that does
        not fit its params (see :func:`check_groups`), an int amount above a group's alive channels,
        or no group to prune. KeyError: a member, mask or score naming no param.

    Example:
      >>> from funcprune.structural import Group, Member
      >>> params = {"a.weight": torch.tensor([[1.0], [3.0], [2.0], [0.5]]),
      ...           "b.weight": torch.ones(1, 4)}
      >>> g = Group(4, (Member("a.weight", 0), Member("b.weight", 1)))
      >>> m = prune_groups(params, [g], 0.5)
      >>> m["a.weight"].flatten(), m["b.weight"].flatten()
      (tensor([False,  True,  True, False]), tensor([False,  True,  True, False]))
    """
    for what, tree in (("params", params), ("masks", masks), ("scores", scores)):
        if isinstance(tree, torch.nn.Module):
            raise TypeError(
                f"prune_groups: {what} must be a tree of tensors named like named_parameters() "
                f"(e.g. dict(module.named_parameters())), got the module {type(tree).__name__}"
            )
    _amount.validate_amount(amount)
    if scope not in ("local", "global"):
        raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
    if not (callable(importance) or importance in _IMPORTANCE):
        raise ValueError(f"importance must be 'l2', 'l1' or a callable, got {importance!r}")
    if not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    named = _pytree.named_leaves(params)
    old = _pytree.masks_for(named, masks)
    keeps = {name: select.as_keep(named[name], mask) for name, mask in old.items()}
    values = dict(named)
    values.update(_pytree.scores_for(named, scores))
    checked = check_groups(groups, {name: tuple(t.shape) for name, t in named.items()})
    chosen = [g for g in checked if g.exact or include_inexact]
    if not chosen:
        raise ValueError(
            "prune_groups has no group to prune (every group is inexact; pass include_inexact=True to prune those too)"
            if checked
            else "prune_groups needs at least one group"
        )
    amount = _amount.as_number(amount)
    imps = [group_importance(g, values, importance, keeps) for g in chosen]
    alives = [_alive(g, keeps) for g in chosen]

    if scope == "local":
        counts = []
        for i, (g, alive) in enumerate(zip(chosen, alives)):
            n = _n_alive(alive, g)
            k = _floor_div(amount, g.pools) if _is_int_amount(amount) else _amount.prune_count(amount, n)
            if isinstance(k, int) and isinstance(n, int) and k > n:
                raise ValueError(
                    f"{describe(i, g)}: amount={amount} prunes {k} channels per pool but only {n} are alive"
                )
            counts.append(k)
    else:
        counts = _global_counts(chosen, imps, alives, amount)
    new: dict[str, torch.Tensor] = {}
    for g, imp, alive, k in zip(chosen, imps, alives, counts):
        n = _n_alive(alive, g)
        channel_keep = _select_channels(g, imp, alive, _constrained(k, n, g, round_to))
        for m in _param_members(g):
            spread = _spread(channel_keep, m, named[m.name].shape)
            new[m.name] = spread if m.name not in new else new[m.name] & spread
    out = {}
    for name in named:
        if name in new:
            mask = new[name] if name not in keeps else new[name] & keeps[name]
            out[name] = mask.expand(named[name].shape).contiguous()  # a fresh full-shaped tensor
        elif name in old:
            out[name] = old[name]
    return _pytree.like(params, out)


def _is_int_amount(amount) -> TypeGuard[Count]:
    if isinstance(amount, torch.Tensor):
        return not amount.is_floating_point()
    return isinstance(amount, int) and not isinstance(amount, bool)


def _global_counts(
    groups: list[Group], imps: list[torch.Tensor], alives: list[torch.Tensor | None], amount
) -> list[Count]:
    """Per group, the channels per pool that one global ranking of normalized importance drops."""
    keys, lives = [], []
    for g, imp, alive in zip(groups, imps, alives):
        live = torch.ones(g.channels, dtype=torch.bool, device=imp.device) if alive is None else alive
        mean = (imp * live).sum() / live.sum().clamp(min=1)
        keys.append(imp / torch.where(mean > 0, mean, torch.ones_like(mean)))
        lives.append(live)
    dtype = torch.promote_types(torch.float32, keys[0].dtype)
    key = torch.cat([k.to(dtype) for k in keys])
    live = torch.cat(lives)
    total = key.numel() if all(a is None for a in alives) else select.count_kept(live)
    amount, k = _amount.drop_count(amount, total, "channels")
    dropped = select.select_flat(
        key, k, largest=False, alive=None if all(a is None for a in alives) else live, k_max=key.numel()
    )
    counts, start = [], 0
    for g in groups:
        taken = dropped[start : start + g.channels].sum()
        start += g.channels
        count: Count = int(taken) if is_concrete(taken) else taken
        counts.append(_floor_div(count, g.pools))
    return counts
