"""The messages every module raises for bad names and bad shapes, worded once.

An unknown name lists the unknown names and, for each, the closest known ones (``difflib``), never
every name of the model: a typo in a 300-tensor model gets a one-line answer. A wrong shape names
the leaf, both shapes as tuples and what the shape was checked against.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

_SHOWN = 10  # unknown names listed before "... (N in all)"
_CLOSE = 3  # closest known names suggested per unknown name


def unknown_names(unknown: Iterable[str], known: Iterable[str], what: str, among: str = "the params") -> KeyError:
    """A ``KeyError`` for names that are not among the known ones, suggesting the closest known names.

    Args:
      unknown: the offending names, in the caller's order.
      known: every valid name (only the closest few appear in the message).
      what: what the names came from, e.g. ``"masks"`` or ``"include"``.
      among: what they were looked up in, e.g. ``"the params"``.

    Returns:
      The exception, for the caller to raise (so the traceback points at the caller).

    Example:
      >>> print(unknown_names(["fc.wieght"], ["fc.weight", "fc.bias", "conv1.bias"], "masks").args[0])
      masks name(s) ['fc.wieght'] are not among the params (3 names); 'fc.wieght': closest 'fc.weight'
    """
    unknown, known = list(unknown), list(known)
    shown = repr(unknown[:_SHOWN])[:-1] + (f", ... ({len(unknown)} in all)]" if len(unknown) > _SHOWN else "]")
    hints = []
    for name in unknown[:_SHOWN]:
        close = difflib.get_close_matches(name, known, n=_CLOSE, cutoff=0.6)
        if close:
            hints.append(f"{name!r}: closest {', '.join(map(repr, close))}")
    message = f"{what} name(s) {shown} are not among {among} ({len(known)} names)"
    return KeyError("; ".join([message, *hints]) if hints else f"{message}; none is close to a known name")


def shape_mismatch(
    what: str,
    shape: Sequence[int],
    of: str | None,
    expected: Sequence[int] | str,
    *,
    name: str | None = None,
    note: str = "",
) -> ValueError:
    """A ``ValueError`` for a tensor whose shape is not the one it was checked against.

    Args:
      what: the offending tensor, e.g. ``"mask"``, ``"scores"``, ``"checkpoint mask"``.
      shape: its shape.
      of: what it was checked against, e.g. ``"the param"`` (None: the message says "expected").
      expected: that shape, or a description of it such as ``"(K, *(3, 4))"``.
      name: the leaf's name, the message's prefix.
      note: appended as is (a hint on the likely mistake).

    Returns:
      The exception, for the caller to raise.

    Example:
      >>> print(shape_mismatch("mask", (2, 3), "the param", (3, 2), name="fc.weight").args[0])
      fc.weight: mask has shape (2, 3) but the param has shape (3, 2)
    """
    expected = expected if isinstance(expected, str) else str(tuple(expected))
    prefix = f"{name}: " if name is not None else ""
    against = f", expected {expected}" if of is None else f" but {of} {_has(of)} shape {expected}"
    return ValueError(f"{prefix}{what} {_has(what)} shape {tuple(shape)}{against}{note}")


def _has(phrase: str) -> str:
    return "have" if phrase.split()[-1] in ("scores", "masks", "params", "grads") else "has"
