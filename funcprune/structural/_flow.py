"""The data model of the channel tracer: segments, channel spaces (a union-find), the flow state.

Every tensor value of the exported graph carries, per dim, a tuple of segments (:class:`Seg`):
"entries ``pos .. pos+length`` of this dim are channel space ``space``, spread evenly". Producers (a
conv's or linear's output dim) start spaces; the op rules (``_rules``, ``_shapes``) carry them to the
outputs of every op and join the spaces that must lose the same channels. Shared by the rules and
the runner (``_trace``), so neither imports the other's internals.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = [
    "Flow",
    "Seg",
    "Shim",
    "Space",
    "TensorState",
    "iter_dims",
    "module_path",
    "norm_dim",
    "shape_of",
    "untracked",
    "where",
]


class Seg(NamedTuple):
    """Entries ``pos .. pos+length-1`` of one dim hold all of ``space``'s channels, in order.

    ``inner=True``: the dim lies INSIDE the entries of another dim that holds ``space`` (the
    ``head_dim`` after a ``view`` into heads); it names no channel of its own.
    """

    space: Space
    pos: int
    length: int
    inner: bool = False


class Space:
    """One channel space (a node of the union-find): its members and what keeps it from pruning."""

    __slots__ = (
        "parent",
        "size",
        "channels",
        "members",
        "producer",
        "pinned",
        "inexact",
        "kinds",
        "pools",
        "merged",
        "parts",
        "origin",
        "ident",
        "attached",
        "fold",
    )

    def __init__(self, ident: int, size: int, origin=None):
        self.parent: Space | None = None
        self.ident = ident
        self.size = size  # fine channels when created (offsets of a split are in these)
        self.channels = size  # current count: gcd with every length that had to align
        # name, dim, offset, length, buffer, local (a grouped conv's in dim: one run, not `fold` runs)
        self.members: list[tuple[str, int, int, int, bool, bool]] = []
        self.producer = False  # a conv/linear/embedding output dim starts here
        self.pinned: list[str] = []  # reasons it may not be pruned (barrier, model output, ...)
        self.inexact: list[str] = []  # normalizations across it
        self.kinds: set = set()
        self.pools = 1
        self.fold = 1  # grouped-conv input: channels are positions local to `fold` runs
        self.merged = False  # joined with another space (then it cannot be split)
        self.parts: list[tuple[Space, int]] | None = None  # after a split: (part, fine size)
        self.origin = origin  # (name, dim, buffer) of a parameter dim not yet claimed
        self.attached: list[Space] = []  # spaces this unclaimed parameter dim was attached to


def module_path(node) -> str:
    """The submodule an exported node came from, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path, cls = list(stack.values())[-1]
    cls = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
    return f"{path or '<top level>'} ({cls})"


class Flow:
    """The dataflow state: spaces, the per-node values, and the helpers the op rules use."""

    def __init__(self):
        self.spaces: list[Space] = []
        self.equal_splits: list[tuple[list, str]] = []  # (each part's segments, reason): one space or pinned

    # --- spaces -------------------------------------------------------------------------
    def new(self, size: int, origin=None) -> Space:
        space = Space(len(self.spaces), size, origin)
        self.spaces.append(space)
        if origin is not None:
            space.members.append((origin[0], origin[1], 0, size, origin[2], False))
        return space

    def find(self, space: Space) -> Space:
        root = space
        while root.parent is not None:
            root = root.parent
        while space.parent is not None:
            space.parent, space = root, space.parent
        return root

    def union(self, a: Space, b: Space, la: int, lb: int) -> Space:
        """Join two spaces whose segments of lengths ``la`` and ``lb`` correspond proportionally."""
        a, b = self.find(a), self.find(b)
        channels = math.gcd(a.channels, b.channels, la, lb)
        if a is b:
            a.channels = channels
            return a
        if len(a.members) < len(b.members):
            a, b = b, a
        b.parent = a
        a.channels = channels
        a.members += b.members
        a.producer |= b.producer
        a.pinned += b.pinned
        a.inexact += b.inexact
        a.kinds |= b.kinds
        a.pools = math.lcm(a.pools, b.pools)
        a.fold = math.lcm(a.fold, b.fold)
        a.merged = True
        a.origin = a.origin if (a.origin is not None and b.origin is not None) else None
        return a

    def claim(self, space: Space) -> Space:
        """A parameter dim becomes a producer: its space now starts a channel space."""
        root = self.find(space)
        if root.attached:
            self.pin(root, "a parameter dim used both as an output and elementwise")
            for other in root.attached:
                self.pin(other, "a parameter dim used both as an output and elementwise")
        root.producer = True
        root.origin = None
        return root

    def member(self, space: Space, name: str, dim: int, pos: int, length: int, buffer=False, local=False):
        root = self.find(space)
        root.members.append((name, dim, pos, length, buffer, local))
        root.channels = math.gcd(root.channels, length * (root.fold if local else 1))

    def pin(self, space: Space, reason: str):
        root = self.find(space)
        if reason not in root.pinned:
            root.pinned.append(reason)

    def mark_inexact(self, space: Space, reason: str):
        root = self.find(space)
        if reason not in root.inexact:
            root.inexact.append(reason)

    # --- segments -----------------------------------------------------------------------
    def resolve(self, segs) -> tuple[Seg, ...]:
        """Segments with split spaces expanded into their parts, spaces replaced by roots."""
        out = []
        for seg in segs:
            root = self.find(seg.space)
            if root.parts is None or seg.inner:
                out.append(seg._replace(space=root))
                continue
            pos = seg.pos
            for part, fine in root.parts:
                length = seg.length * fine // root.size
                out.extend(self.resolve((Seg(part, pos, length),)))
                pos += length
        return tuple(out)

    def split(self, seg: Seg, cut: int, node) -> bool:
        """Split ``seg``'s space at entry ``cut`` (relative to ``seg.pos``); False if it cannot."""
        space = self.find(seg.space)
        if space.merged or space.parts is not None or (cut * space.size) % seg.length:
            return False
        fine = cut * space.size // seg.length
        halves = []
        for lo, hi in ((0, fine), (fine, space.size)):
            part = self.new(hi - lo)
            part.producer, part.origin, part.kinds = space.producer, space.origin, set(space.kinds)
            part.pinned, part.inexact, part.pools = list(space.pinned), list(space.inexact), space.pools
            if part.origin is not None:
                part.origin = (space.origin[0], space.origin[1], space.origin[2])
            if space.fold > 1 or any(m[5] for m in space.members):
                return False
            for name, dim, off, length, buf, _ in space.members:
                unit = length // space.size
                if length % space.size:
                    return False
                self.member(part, name, dim, off + lo * unit, (hi - lo) * unit, buf)
            halves.append((part, hi - lo))
        space.parts = halves
        return True

    def fresh_pinned(self, size: int, reason: str) -> tuple[Seg, ...]:
        space = self.new(size)
        space.pinned.append(reason)
        return (Seg(space, 0, size),)

    def pin_all(self, values, reason: str):
        """Pin every space a (possibly nested) value carries."""
        for segs in iter_dims(values):
            for seg in self.resolve(segs):
                if seg.space.origin is None:
                    self.pin(seg.space, reason)

    def attach(self, param: Seg, others, reason: str):
        """An unclaimed parameter dim (a BN weight, a consumer's input dim) joins the spaces it meets.

        Its members are added to each met space at the matching offsets; a second use of the same
        parameter dim with other spaces pins all of them (it would couple them: not followed).
        """
        space = self.find(param.space)
        if space.attached:
            met, todo = set(), list(space.attached)
            while todo:  # the spaces it met, and their parts where they were split since
                root = self.find(todo.pop())
                met.add(id(root))
                todo.extend(part for part, _ in root.parts or ())
            if all(seg.inner or self.find(seg.space) is space or id(self.find(seg.space)) in met for seg in others):
                return  # the same use again (the train-mode graph after the eval-mode one)
            for seg in others:
                self.pin(seg.space, reason + ": a parameter dim used in two places")
            for other in space.attached:
                self.pin(other, reason + ": a parameter dim used in two places")
            return
        for seg in others:
            if seg.inner or self.find(seg.space) is space:
                continue
            lo = seg.pos - param.pos
            for name, dim, off, length, buf, _ in list(space.members):
                if (length * lo) % param.length or (length * seg.length) % param.length:
                    self.pin(seg.space, reason + f": {name} dim {dim} does not split evenly")
                    continue
                self.member(
                    seg.space, name, dim, off + length * lo // param.length, length * seg.length // param.length, buf
                )
            space.attached.append(self.find(seg.space))

    def align(self, a, b, reason: str):
        """Two dims that hold the same entries (an elementwise op): join what they carry."""
        a, b = self.resolve(a), self.resolve(b)
        if not a and not b:
            return
        if not a or not b:  # channels meet a dim that has none (model input, untracked value)
            for seg in a or b:
                if seg.space.origin is None and not seg.inner:
                    self.pin(seg.space, reason)
            return
        if any(s.inner for s in a + b):
            if all(s.inner or s.space.origin is not None for s in a + b) and any(
                s.space.origin is not None for s in a + b
            ):
                return  # a parameter or buffer along the head dim (rotary tables): shared by all heads
            if [(s.pos, s.inner) for s in a] == [(s.pos, s.inner) for s in b] and all(
                self.find(x.space) is self.find(y.space) for x, y in zip(a, b)
            ):
                return
            for seg in a + b:
                self.pin(seg.space, reason)
            return
        for one, other in ((a, b), (b, a)):
            if len(one) == 1 and one[0].space.origin is not None:
                self.attach(one[0], other, reason)
                return
        if [(s.pos, s.length) for s in a] == [(s.pos, s.length) for s in b]:
            for x, y in zip(a, b):
                self.union(x.space, y.space, x.length, y.length)
            return
        for seg in a + b:  # differently partitioned channels meet
            self.pin(seg.space, reason + " (channel partitions differ)")


def iter_dims(value):
    """Every dim's segment tuple in a value (a tensor's tuple of dims, or lists of those)."""
    if isinstance(value, TensorState):
        yield from value.dims
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_dims(item)


class TensorState(NamedTuple):
    """What one tensor value carries: its shape and, per dim, its segments."""

    shape: tuple[int, ...]
    dims: tuple[tuple[Seg, ...], ...]


def untracked(shape) -> TensorState:
    return TensorState(tuple(shape), tuple(() for _ in shape))


def shape_of(node) -> tuple[int, ...]:
    """The shape of a node's (single) output."""
    return tuple(node.meta["val"].shape)


def where(node, what: str) -> str:
    """``what`` with the op and the submodule it came from, for reasons and messages."""
    return f"{what} ({node.target}, submodule {module_path(node)})"


def norm_dim(dim: int, n: int) -> int:
    """A dim index made non-negative for a rank-``n`` value."""
    return dim + n if dim < 0 else dim


class Shim:
    """A node with another ``val`` (one output of a multi-output op), for the shared rules."""

    def __init__(self, node, val):
        self.meta = dict(node.meta, val=val)
        self.target = node.target
        self.name = getattr(node, "name", "")
