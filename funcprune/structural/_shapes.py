"""Channel rules of the layout ops: views and reshapes (heads, flatten), permutes, cat, split, select."""

from __future__ import annotations

import math

from ._flow import Seg, Shim, TensorState, module_path
from ._flow import norm_dim as _nd
from ._flow import shape_of as _shape
from ._flow import where as _why


def _real(flow, segs):
    return tuple(s for s in flow.resolve(segs) if not s.inner)


# --- reshape ------------------------------------------------------------------------------------
def _blocks(a, b):
    """Group the non-1 dims of two shapes of equal numel into runs of equal product."""
    ia = [i for i, n in enumerate(a) if n != 1]
    ib = [i for i, n in enumerate(b) if n != 1]
    out, i, j = [], 0, 0
    while i < len(ia) or j < len(ib):
        ga, gb, pa, pb = [], [], 1, 1
        while True:
            if pa <= pb and i < len(ia):
                ga.append(ia[i])
                pa *= a[ia[i]]
                i += 1
            elif j < len(ib):
                gb.append(ib[j])
                pb *= b[ib[j]]
                j += 1
            else:
                break
            if pa == pb and ga and gb:
                break
        out.append((ga, gb))
    return out


def reshape_state(flow, node, x: TensorState, shape):
    """Follow channels through any view: dims merge (flatten: unit H*W) or split (heads)."""
    shape = tuple(shape)
    why = _why(node, "reshape")
    dims: list[tuple[Seg, ...]] = [() for _ in shape]
    for d, n in enumerate(x.shape):
        if n == 1 and _real(flow, x.dims[d]):
            flow.pin_all([TensorState((1,), (x.dims[d],))], why + ": a one-entry channel dim")
    for ga, gb in _blocks(x.shape, shape):
        sizes = [x.shape[d] for d in ga]
        real = [(k, _real(flow, x.dims[d])) for k, d in enumerate(ga)]
        real = [(k, segs) for k, segs in real if segs]
        inner_spaces = {flow.find(s.space) for d in ga for s in flow.resolve(x.dims[d]) if s.inner}
        if len(ga) == 1 and len(gb) == 1:
            dims[gb[0]] = x.dims[ga[0]]
            continue
        if not real:
            continue  # batch/spatial/head_dim runs: nothing to follow
        if len(real) > 1 or math.prod(sizes[: real[0][0]]) > 1:
            # channels interleave with another dim (two channel dims merged, or an outer dim
            # repeats them: channel shuffle): not separable
            reason = why + ": mixes channels with another dim"
            flow.pin_all([TensorState((1,), (segs,)) for _, segs in real], reason)
            for e in gb:  # where the mixed channels went is unknown: every dim of the run
                dims[e] = flow.fresh_pinned(shape[e], reason)
            continue
        k, segs = real[0]
        roots = {flow.find(s.space) for s in segs}
        if inner_spaces - roots:
            flow.pin_all([TensorState((1,), (segs,))], why + ": merges channels of two spaces")
        inner = math.prod(sizes[k + 1 :])
        virtual = [Seg(s.space, s.pos * inner, s.length * inner) for s in segs]
        # split the virtual dim over gb: channels land on gb's outermost dim
        head = math.prod(shape[e] for e in gb[1:])
        if all(s.pos % head == 0 and s.length % head == 0 for s in virtual):
            dims[gb[0]] = tuple(Seg(s.space, s.pos // head, s.length // head) for s in virtual)
            if len(virtual) == 1 and len(gb) > 1:
                for e in gb[1:]:
                    dims[e] = (Seg(virtual[0].space, 0, shape[e], inner=True),)
                if virtual[0].length // head > 1:
                    flow.find(virtual[0].space).kinds.add("heads")
        else:
            flow.pin_all([TensorState((1,), (segs,))], why + ": splits channels unevenly")
            dims[gb[0]] = flow.fresh_pinned(shape[gb[0]], why)
    return TensorState(shape, tuple(dims))


def view(flow, node, args, kwargs):
    return reshape_state(flow, node, args[0], _shape(node))


def permute(flow, node, args, kwargs):
    x = args[0]
    n = len(x.shape)
    order = args[1] if len(args) > 1 else range(n - 1, -1, -1)  # numpy_T: no order, all dims reversed
    return TensorState(_shape(node), tuple(x.dims[_nd(d, n)] for d in order))


def transpose(flow, node, args, kwargs):
    x = args[0]
    n = len(x.shape)
    if n < 2:
        return TensorState(_shape(node), x.dims)
    a, b = (_nd(args[1], n), _nd(args[2], n)) if len(args) > 2 else (0, 1)
    dims = list(x.dims)
    dims[a], dims[b] = dims[b], dims[a]
    return TensorState(_shape(node), tuple(dims))


def expand(flow, node, args, kwargs):
    """expand/repeat_interleave-free broadcast views: new or size-1 dims gain entries, no channels."""
    x = args[0]
    shape = _shape(node)
    lead = len(shape) - len(x.shape)
    dims = [()] * lead
    for d, segs in enumerate(x.dims):
        if x.shape[d] != shape[lead + d] and _real(flow, segs):
            flow.pin_all([TensorState((1,), (segs,))], _why(node, "expand of a channel dim"))
        dims.append(segs if x.shape[d] == shape[lead + d] else ())
    return TensorState(shape, tuple(dims))


def repeat(flow, node, args, kwargs):
    x, reps = args[0], args[1]
    shape = _shape(node)
    lead = len(shape) - len(x.shape)
    dims = [()] * lead
    for d, segs in enumerate(x.dims):
        if reps[lead + d] != 1 and _real(flow, segs):
            flow.pin_all([TensorState((1,), (segs,))], _why(node, "repeat of a channel dim"))
            segs = flow.fresh_pinned(shape[lead + d], _why(node, "repeat"))
        dims.append(segs)
    return TensorState(shape, tuple(dims))


# --- cat / stack --------------------------------------------------------------------------------
def cat(flow, node, args, kwargs):
    tensors = [t for t in args[0] if isinstance(t, TensorState) and t.shape != (0,)]
    shape = _shape(node)
    dim = _nd(args[1] if len(args) > 1 else kwargs.get("dim", 0), len(shape))
    why = _why(node, "cat")
    dims = []
    for d in range(len(shape)):
        if d == dim:
            segs, pos = [], 0
            for t in tensors:
                segs += [s._replace(pos=s.pos + pos) for s in _real(flow, t.dims[d])]
                pos += t.shape[d]
            dims.append(tuple(segs))
        else:
            for t in tensors[1:]:
                flow.align(tensors[0].dims[d], t.dims[d], why)
            dims.append(
                next(
                    (
                        flow.resolve(t.dims[d])
                        for t in tensors
                        if t.dims[d] and all(s.space.origin is None for s in flow.resolve(t.dims[d]))
                    ),
                    flow.resolve(tensors[0].dims[d]),
                )
            )
    return TensorState(shape, tuple(dims))


def stack(flow, node, args, kwargs):
    tensors = args[0]
    shape = _shape(node)
    dim = _nd(args[1] if len(args) > 1 else 0, len(shape))
    for t in tensors[1:]:
        for d in range(len(t.shape)):
            flow.align(tensors[0].dims[d], t.dims[d], _why(node, "stack"))
    dims = list(flow.resolve(s) for s in tensors[0].dims)
    dims.insert(dim, ())
    return TensorState(shape, tuple(dims))


# --- slicing ------------------------------------------------------------------------------------
def _slice_dim(flow, node, segs, start, end, step, size):
    """The segments of entries start..end (step) of a dim; partly cut spaces are split."""
    why = _why(node, "slice")
    for _ in range(64):  # each pass splits at most one space, then starts over
        out, again = [], False
        for s in flow.resolve(segs):
            lo, hi = max(start, s.pos), min(end, s.pos + s.length)
            if s.inner:
                out.append(s._replace(pos=0, length=len(range(start, end, step))))
                continue
            if lo >= hi:
                continue
            if step != 1:
                flow.pin(s.space, why + ": strided slice of channels")
                continue
            if lo == s.pos and hi == s.pos + s.length:
                out.append(s._replace(pos=s.pos - start))
                continue
            cut = (lo if lo > s.pos else hi) - s.pos
            if flow.split(s, cut, node):
                again = True
                break
            flow.pin(s.space, why + ": cuts through a coupled channel space")
        if not again:
            return tuple(out)
    raise RuntimeError("funcprune.structural: slice did not settle")  # pragma: no cover


def slice_(flow, node, args, kwargs):
    x = args[0]
    n = len(x.shape)
    dim = _nd(args[1] if len(args) > 1 else 0, n)
    start = args[2] if len(args) > 2 and args[2] is not None else 0
    end = args[3] if len(args) > 3 and args[3] is not None else x.shape[dim]
    step = args[4] if len(args) > 4 else 1
    start, end = _clip(start, x.shape[dim]), _clip(end, x.shape[dim])
    dims = list(x.dims)
    if (start, end, step) != (0, x.shape[dim], 1) and _real(flow, x.dims[dim]):
        # bounds the forward hard-codes (h[:, :4]; a fused projection cut at a fixed width): after a shrink
        # they would take other channels, so the channels on either side are a barrier
        reason = _why(node, "a slice of channels with fixed bounds")
        flow.pin_all([TensorState((1,), (x.dims[dim],))], reason)
        for seg in flow.resolve(x.dims[dim]):
            if seg.space.origin is not None and not seg.inner:
                flow.pin(seg.space, reason)
        dims[dim] = flow.fresh_pinned(_shape(node)[dim], reason)
        return TensorState(_shape(node), tuple(dims))
    dims[dim] = _slice_dim(flow, node, x.dims[dim], start, end, step, x.shape[dim])
    return TensorState(_shape(node), tuple(dims))


def _clip(i, n):
    i = i + n if i < 0 else i
    return min(max(i, 0), n)


def _pieces(flow, node, x, dim, sizes):
    out, pos = [], 0
    for size in sizes:
        dims = list(x.dims)
        dims[dim] = _slice_dim(flow, node, x.dims[dim], pos, pos + size, 1, x.shape[dim])
        shape = list(x.shape)
        shape[dim] = size
        out.append(TensorState(tuple(shape), tuple(dims)))
        pos += size
    return out


def split(flow, node, args, kwargs):
    x = args[0]
    dim = _nd(args[2] if len(args) > 2 else kwargs.get("dim", 0), len(x.shape))
    sizes = [tuple(v.shape)[dim] for v in node.meta["val"]]
    name = node.target.overloadpacket.__name__
    if any(not s.inner for s in flow.resolve(x.dims[dim])):
        why = _why(node, f"{name} along a channel dim")
        if name == "split_with_sizes" or len(set(sizes)) > 1:  # sizes the forward hard-codes
            flow.pin_all([TensorState((1,), (x.dims[dim],))], why + " into parts of given sizes")
        else:  # equal parts the forward recomputes: pruned together (GPT-2's q/k/v) or not at all
            pieces = _pieces(flow, node, x, dim, sizes)
            flow.equal_splits.append(
                ([p.dims[dim] for p in pieces], why + " into equal parts that are not pruned as one channel space")
            )
            return pieces
    return _pieces(flow, node, x, dim, sizes)


def select(flow, node, args, kwargs):
    """One entry of a dim: off a channel dim, only the split-off part of a fused projection."""
    x = args[0]
    n = len(x.shape)
    dim, i = _nd(args[1], n), args[2]
    i = i + x.shape[dim] if i < 0 else i
    shape = _shape(node)
    dims = list(x.dims)
    raw = {flow.find(s.space) for s in x.dims[dim] if not s.inner}
    holders = [
        d for d, ds in enumerate(dims) if d != dim and len(ds) == 1 and ds[0].inner and flow.find(ds[0].space) in raw
    ]
    holders = [d - (d > dim) for d in holders]
    segs = _real(flow, x.dims[dim])
    del dims[dim]
    for s in segs:
        if not s.pos <= i < s.pos + s.length:
            continue
        piece = _slice_dim(flow, node, (s,), i, i + 1, 1, x.shape[dim])
        if len(holders) == 1 and len(piece) == 1 and not flow.find(piece[0].space).pinned:
            d = holders[0]
            dims[d] = (Seg(piece[0].space, 0, shape[d]),)
        else:  # the channels of the picked entry would live nowhere: keep them whole
            flow.pin(s.space, _why(node, "select of one channel"))
    return TensorState(shape, tuple(dims))


def unbind(flow, node, args, kwargs):
    x = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    return [select(flow, Shim(node, v), (x, dim, i), {}) for i, v in enumerate(node.meta["val"])]


def getitem(flow, node, args, kwargs):
    seq, i = args[0], args[1]
    if isinstance(seq, (list, tuple)):
        return seq[i]
    raise NotImplementedError(
        f"funcprune.structural.groups: getitem on {type(seq).__name__} in submodule {module_path(node)}"
    )


def squeeze(flow, node, args, kwargs):
    return reshape_state(flow, node, args[0], _shape(node))


SHAPE_RULES = {
    "view": view,
    "reshape": view,
    "_unsafe_view": view,
    "flatten": view,
    "unflatten": view,
    "squeeze": squeeze,
    "unsqueeze": squeeze,
    "view_as": view,
    "reshape_as": view,
    "permute": permute,
    "transpose": transpose,
    "t": transpose,
    "numpy_T": permute,
    "expand": expand,
    "expand_as": expand,
    "repeat": repeat,
    "cat": cat,
    "concat": cat,
    "stack": stack,
    "slice": slice_,
    "split": split,
    "split_with_sizes": split,
    "chunk": split,
    "unbind": unbind,
    "select": select,
    "getitem": getitem,
}
