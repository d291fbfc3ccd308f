"""The built-in per-op channel rules: how each ATen op carries and joins channel spaces.

Each rule takes ``(flow, node, args, kwargs)`` (graph values replaced by their
:class:`~funcprune.structural._flow.TensorState`) and returns the output's state. The table that maps
op names to these rules, and :func:`~funcprune.structural.register_rule`, live in ``_rules.py``.
"""

from __future__ import annotations

import math

from ._flow import Seg, Shim, TensorState, module_path, untracked
from ._flow import norm_dim as _nd
from ._flow import shape_of as _shape
from ._flow import where as _where

__all__ = [
    "unary",
    "broadcast",
    "nothing",
    "conv",
    "convolution",
    "linear",
    "matmul",
    "embedding",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "softmax",
    "reduction",
    "pool",
    "max_min",
    "clamp",
    "barrier_on_dim",
    "index",
    "sdpa",
]


def _claimed(flow, segs):
    """An output dim made of one unclaimed parameter dim: that dim becomes a producer."""
    segs = flow.resolve(segs)
    if len(segs) == 1 and segs[0].space.origin is not None:
        return (segs[0]._replace(space=flow.claim(segs[0].space)),)
    return segs


def _prefer(flow, *candidates):
    """The first segments that are not an unclaimed parameter dim (else the first non-empty)."""
    found = [flow.resolve(c) for c in candidates if c]
    for segs in found:
        if not any(s.space.origin is not None for s in segs):
            return segs
    return found[0] if found else ()


# --- elementwise ------------------------------------------------------------------------------
def unary(flow, node, args, kwargs):
    x = args[0]
    return TensorState(_shape(node), x.dims) if isinstance(x, TensorState) else untracked(_shape(node))


def broadcast(flow, node, args, kwargs):
    """Elementwise ops with broadcasting: dims of equal size hold the same channels (joined)."""
    shape = _shape(node)
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, TensorState)]
    dims = []
    why = _where(node, "elementwise op")
    for d in range(len(shape)):
        present = []
        for t in tensors:
            k = d - (len(shape) - len(t.shape))
            if k < 0:
                continue
            if t.shape[k] == shape[d]:
                present.append(t.dims[k])
            elif t.dims[k]:  # a channel dim broadcast over many entries
                flow.pin_all([TensorState((1,), (t.dims[k],))], why + ": broadcasts channels")
        for other in present[1:]:
            flow.align(present[0], other, why)
        dims.append(_prefer(flow, *present))
    return TensorState(shape, tuple(dims))


def nothing(flow, node, args, kwargs):
    return None


# --- producers and consumers --------------------------------------------------------------------
def conv(flow, node, args, kwargs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    shape = _shape(node)
    why = _where(node, "convolution")
    cin, cout = x.shape[1], w.shape[0]
    if groups == 1:
        out = _claimed(flow, w.dims[0])
        flow.align(x.dims[1], w.dims[1], why)
    elif groups == cin and w.shape[1] == 1 and cout % cin == 0:  # depthwise: out c*m.. <- in c
        m = cout // cin
        out = tuple(Seg(s.space, s.pos * m, s.length * m) for s in flow.resolve(x.dims[1]) if not s.inner)
        flow.align(out, w.dims[0], why)
        if not out:  # the input carries no channel space (model input): its channels stay, so do these
            out = _claimed(flow, w.dims[0])
            for seg in out:
                flow.pin(seg.space, why + ": depthwise conv whose input channels cannot be pruned")
    else:  # grouped: outputs pruned an equal count per conv group; inputs are group-local in w
        out = _claimed(flow, w.dims[0])
        for seg in out:
            flow.find(seg.space).pools = groups
        # inputs: the weight's in dim is local to each conv group, so every conv group loses the
        # same local positions (the space folds into `groups` runs)
        segs = flow.resolve(x.dims[1])
        origin = flow.find(w.dims[1][0].space).origin if w.dims[1] else None
        if len(segs) == 1 and segs[0].pos == 0 and segs[0].length == cin and not segs[0].inner and origin is not None:
            root = flow.find(segs[0].space)
            root.fold = root.fold * groups // math.gcd(root.fold, groups)
            flow.member(root, origin[0], 1, 0, cin // groups, origin[2], local=True)
        elif segs:
            flow.pin_all([x], why + f": input channels of a grouped conv (groups={groups}) are not one channel space")
    if isinstance(b, TensorState):
        flow.align(out, b.dims[0], why)
    return TensorState(shape, ((),) + (tuple(out),) + tuple(() for _ in shape[2:]))


def convolution(flow, node, args, kwargs):
    if args[6]:  # transposed
        raise NotImplementedError(
            f"funcprune.structural.groups: no channel rule for transposed convolution in submodule {module_path(node)}"
        )
    return conv(flow, node, list(args[:6]) + [args[8]], {})


def linear(flow, node, args, kwargs):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    out = _claimed(flow, w.dims[0])
    flow.align(x.dims[-1], w.dims[1], _where(node, "linear"))
    if isinstance(b, TensorState):
        flow.align(out, b.dims[0], _where(node, "linear"))
    shape = _shape(node)
    return TensorState(shape, x.dims[:-1] + (out,))


def matmul(flow, node, args, kwargs):
    """mm/bmm/matmul/addmm/baddbmm: batch dims broadcast, ``a[-1]`` meets ``b[-2]``."""
    name = node.target.overloadpacket.__name__
    bias = None
    if name in ("addmm", "baddbmm"):
        bias, args = args[0], args[1:]
    a, b = args[0], args[1]
    shape = _shape(node)
    why = _where(node, "matrix product")
    a_dims, b_dims = a.dims, b.dims
    if len(a.shape) == 1:
        a_dims = ((),) + a_dims
    if len(b.shape) == 1:
        b_dims = b_dims + ((),)
    a_shape = (1,) * (len(a_dims) - len(a.shape)) + a.shape
    b_shape = b.shape + (1,) * (len(b_dims) - len(b.shape))
    batch = []
    nb = max(len(a_dims), len(b_dims)) - 2
    for d in range(nb):
        cands = []
        for dims, shp in ((a_dims, a_shape), (b_dims, b_shape)):
            k = d - (nb - (len(dims) - 2))
            if k >= 0 and shp[k] > 1:
                cands.append(dims[k])
        for other in cands[1:]:
            flow.align(cands[0], other, why)
        batch.append(_prefer(flow, *cands))
    if all(any(not s.inner and s.space.origin is None for s in flow.resolve(d)) for d in (a_dims[-1], b_dims[-2])):
        # two activations contracted over channels: a sum over them (a zeroed channel need not be zero there)
        for seg in flow.resolve(a_dims[-1]) + flow.resolve(b_dims[-2]):
            if not seg.inner and seg.space.origin is None:
                flow.mark_inexact(seg.space, _where(node, f"{name} of two activations across channels"))
    flow.align(a_dims[-1], b_dims[-2], why)  # after the batch dims: heads joined first
    out_n, out_m = a_dims[-2], _claimed(flow, b_dims[-1])
    dims = tuple(batch) + (out_n, out_m)
    if len(a.shape) == 1:
        dims = dims[:-2] + dims[-1:]
    if len(b.shape) == 1:
        dims = dims[:-1]
    out = TensorState(shape, dims)
    if isinstance(bias, TensorState):
        out = broadcast(flow, node, (out, bias), {})
    return out


def embedding(flow, node, args, kwargs):
    w, idx = args[0], args[1]
    for seg in w.dims[0]:
        flow.pin(seg.space, _where(node, "embedding rows are indexed by token ids"))
    return TensorState(_shape(node), idx.dims + (_claimed(flow, w.dims[1]),))


# --- normalizations -----------------------------------------------------------------------------
def batch_norm(flow, node, args, kwargs):
    x = args[0]
    why = _where(node, "batch norm")
    for p in args[1:5]:
        if isinstance(p, TensorState):
            flow.align(x.dims[1], p.dims[0], why)
    out = TensorState(tuple(x.shape), x.dims)
    if isinstance(node.meta["val"], (tuple, list)):
        return [out] + [untracked(v.shape) for v in node.meta["val"][1:]]
    return out


def layer_norm(flow, node, args, kwargs):
    x, normalized = args[0], args[1]
    k = len(normalized)
    why = _where(node, "layer norm")
    for p in args[2:4]:
        if isinstance(p, TensorState):
            for d in range(k):
                flow.align(x.dims[len(x.shape) - k + d], p.dims[d], why)
    affine = isinstance(args[2] if len(args) > 2 else kwargs.get("weight"), TensorState)
    for segs in x.dims[len(x.shape) - k :]:
        for seg in flow.resolve(segs):
            if seg.inner:
                continue
            flow.mark_inexact(seg.space, _where(node, "normalization across channels"))
            if not affine:  # no weight whose shape the normalized_shape could follow after a shrink
                flow.pin(seg.space, _where(node, "a normalization without an affine weight across channels"))
    out = TensorState(tuple(x.shape), x.dims)
    if isinstance(node.meta["val"], (tuple, list)):
        return [out] + [untracked(v.shape) for v in node.meta["val"][1:]]
    return out


def group_norm(flow, node, args, kwargs):
    x, num_groups = args[0], args[1]
    why = _where(node, "group norm")
    for p in args[2:4]:
        if isinstance(p, TensorState):
            flow.align(x.dims[1], p.dims[0], why)
    for seg in flow.resolve(x.dims[1]):
        flow.mark_inexact(seg.space, _where(node, "normalization across channels"))
        root = flow.find(seg.space)
        root.pools = math.lcm(root.pools, num_groups)
    return TensorState(tuple(x.shape), x.dims)


def softmax(flow, node, args, kwargs):
    x, dim = args[0], _nd(args[1], len(args[0].shape))
    for seg in flow.resolve(x.dims[dim]):
        if not seg.inner:
            flow.mark_inexact(seg.space, _where(node, "softmax across channels"))
    return TensorState(tuple(x.shape), x.dims)


def reduction(flow, node, args, kwargs):
    """mean/sum/amax/var/norm...: reducing over a channel dim is inexact (a sum too: a zeroed channel
    need not be zero where it is summed, e.g. ``sigmoid(0) = 0.5``)."""
    x = args[0]
    n = len(x.shape)
    name = node.target.overloadpacket.__name__
    rest = list(args[2:] if name in ("norm", "linalg_vector_norm") else args[1:])  # (x, p, dim, ...)
    dims = rest[0] if rest else kwargs.get("dim")
    if dims is None or dims == []:
        dims = list(range(n))
    elif isinstance(dims, int):
        dims = [dims]
    dims = {_nd(d, n) for d in dims}
    keep = rest[1] if len(rest) > 1 and isinstance(rest[1], bool) else kwargs.get("keepdim", False)
    for d in dims:
        for seg in flow.resolve(x.dims[d]):
            if not seg.inner:
                flow.mark_inexact(seg.space, _where(node, f"{name} across channels"))
    out = TensorState(
        _shape(node) if not isinstance(node.meta["val"], (tuple, list)) else tuple(node.meta["val"][0].shape),
        tuple(() if d in dims else x.dims[d] for d in range(n) if keep or d not in dims),
    )
    if isinstance(node.meta["val"], (tuple, list)):  # max.dim / min.dim: (values, indices)
        return [out, out]
    return out


_SPATIAL = {"1d": 1, "2d": 2, "3d": 3}


def pool(flow, node, args, kwargs):
    """Pooling, padding, upsampling over the trailing spatial dims: the other dims pass through."""
    x = args[0]
    name = node.target.overloadpacket.__name__
    val = node.meta["val"]
    shape = tuple((val[0] if isinstance(val, (tuple, list)) else val).shape)
    base = name[: -len("_with_indices")] if name.endswith("_with_indices") else name
    k = len(args[1]) // 2 if name in ("constant_pad_nd", "pad") else _SPATIAL[base[-2:]]
    lead = len(x.shape) - k
    for segs in x.dims[lead:]:
        if segs:
            flow.pin_all([TensorState((1,), (segs,))], _where(node, "pooling over channels"))
    out = TensorState(shape, x.dims[:lead] + tuple(() for _ in shape[lead:]))
    if isinstance(val, (tuple, list)):  # (values, indices): the indices keep the values' channels
        return [out, out]
    return out


def max_min(flow, node, args, kwargs):
    """``torch.max/min(a, b)`` is elementwise; ``torch.max/min(x[, dim])`` a reduction."""
    if len(args) > 1 and isinstance(args[1], TensorState) or isinstance(kwargs.get("other"), TensorState):
        return broadcast(flow, node, args, kwargs)
    return reduction(flow, node, args, kwargs)


def clamp(flow, node, args, kwargs):
    """``clamp(x, min, max)``: elementwise with tensor bounds (their channels join x's), else unary."""
    if any(isinstance(a, TensorState) for a in list(args[1:]) + list(kwargs.values())):
        return broadcast(flow, node, args, kwargs)
    return unary(flow, node, args, kwargs)


def barrier_on_dim(dim_arg: int, what: str, default_last: bool = False):
    """Ops whose meaning depends on the channel count along their dim (roll, flip, gather...)."""

    def rule(flow, node, args, kwargs):
        val = node.meta["val"]
        if isinstance(val, (tuple, list)):  # sort, topk: (values, indices), both laid out alike
            out = rule(flow, Shim(node, val[0]), args, kwargs)
            return [TensorState(tuple(v.shape), out.dims) for v in val]
        x = args[0]
        dims = args[dim_arg] if len(args) > dim_arg else kwargs.get("dim", -1 if default_last else None)
        dims = range(len(x.shape)) if dims is None else ([dims] if isinstance(dims, int) else dims)
        out_dims = list(x.dims) if _shape(node) == tuple(x.shape) else [() for _ in _shape(node)]
        for d in dims:
            d = _nd(d, len(x.shape))
            if x.dims[d]:
                reason = _where(node, f"{what} over channels")
                flow.pin_all([TensorState((1,), (x.dims[d],))], reason)
                if d < len(out_dims) and _shape(node) == tuple(x.shape):
                    out_dims[d] = flow.fresh_pinned(x.shape[d], reason)
        if _shape(node) != tuple(x.shape):
            flow.pin_all([x], _where(node, what))
        return TensorState(_shape(node), tuple(out_dims))

    return rule


def index(flow, node, args, kwargs):
    """``x[idx]`` (``aten.index``): the indexed dims are barriers, the others carry their channels (a per-head
    bias gathered from a table keeps its heads); ``index_put`` follows nothing."""
    x, indices = args[0], args[1]
    shape = _shape(node)
    name = node.target.overloadpacket.__name__
    used = [d for d, i in enumerate(indices) if i is not None]
    if name != "index" or not used:
        flow.pin_all([x], _where(node, "advanced indexing"))
        return untracked(shape)
    for d in used:
        if x.dims[d]:
            flow.pin_all([TensorState((1,), (x.dims[d],))], _where(node, "advanced indexing"))
    rest = [x.dims[d] for d in range(len(x.shape)) if d not in used]
    width = len(shape) - len(rest)  # the broadcast index dims
    if used == list(range(used[0], used[-1] + 1)):  # adjacent: the index dims replace them in place
        dims = list(x.dims[: used[0]]) + [()] * width + list(x.dims[used[-1] + 1 :])
    else:
        dims = [()] * width + rest
    return TensorState(shape, tuple(dims))


# --- attention ----------------------------------------------------------------------------------
def sdpa(flow, node, args, kwargs):
    """``scaled_dot_product_attention`` on ``(..., L, E)``: the dims before the last two are batch dims
    (``(N, H, L, E)``: ``H`` the heads, joined across q, k and v; a per-head ``attn_mask`` joins them too)."""
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
    why = _where(node, "attention")
    n = len(q.shape)
    for t in (k, v):  # heads of q, k, v are pruned together (GQA: a kv head with its q heads)
        for d in range(n - 2):
            qs, ts = flow.resolve(q.dims[d]), flow.resolve(t.dims[d])
            if d == n - 3 and qs and ts and len(qs) == len(ts) == 1 and not qs[0].inner and not ts[0].inner:
                flow.union(qs[0].space, ts[0].space, qs[0].length, ts[0].length)
            elif q.shape[d] == t.shape[d]:
                flow.align(q.dims[d], t.dims[d], why)
            else:
                flow.pin_all(
                    [TensorState((1,), (q.dims[d],)), TensorState((1,), (t.dims[d],))],
                    why + ": q and k/v differ in a batch dim",
                )
    if n >= 4:
        for seg in flow.resolve(q.dims[n - 3]):
            flow.find(seg.space).kinds.add("heads")
    for t in (q, k, v):  # the head dim and the scale 1/sqrt(head_dim): not channels we prune
        for seg in flow.resolve(t.dims[-1]):
            if not seg.inner:
                flow.pin(seg.space, why + ": channels inside the attention's head dim")
    if isinstance(mask, TensorState):  # broadcast against the scores (..., L, S): a per-head bias joins q's heads
        lead = n - len(mask.shape)
        for d in range(len(mask.shape) - 2):
            if lead + d >= 0 and mask.shape[d] == q.shape[lead + d] and mask.shape[d] > 1:
                if not mask.dims[d]:  # e.g. torch.zeros(1, n_heads, L, S): a size that does not follow a shrink
                    flow.pin_all(
                        [TensorState((1,), (q.dims[lead + d],))],
                        why + ": a per-head attention mask of a fixed head count",
                    )
                flow.align(q.dims[lead + d], mask.dims[d], why + ": a per-head attention mask")
            elif mask.dims[d]:
                flow.pin_all([TensorState((1,), (mask.dims[d],))], why + ": channels in the attention mask")
        flow.pin_all([TensorState((1, 1), mask.dims[-2:])], why + ": channels in the attention mask")
    return TensorState(_shape(node), tuple(q.dims[:-1]) + (v.dims[-1],))
