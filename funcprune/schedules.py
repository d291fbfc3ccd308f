"""Pruning schedules: pure functions of the training step.

A schedule maps a step to the *cumulative* target sparsity at that step (or, for dynamic sparse
training, to a drop fraction). funcprune's ``amount`` is relative to the survivors, so a growing
target becomes a per-round amount with :func:`amount_between` (from the measured sparsity; given
counts -- ``fp.sparsity(...)`` or ``total=`` -- every round lands exactly on ``round(target * n)``)
or :func:`round_amounts` (a whole plan up front). A gradual-pruning loop::

    for step in range(steps):
        if is_update_step(step, begin, end, every):      # ..., and always `end` itself
            amount = amount_between(fp.sparsity(masks, params), schedule(step))
            masks = fp.global_unstructured(params, amount, masks=masks)

ends at exactly the schedule's final sparsity, whatever ``every`` is.

Steps are ints or 0-d tensors; with a tensor step a schedule returns a 0-d float64 tensor, so
schedules compose with ``vmap`` and compiled training steps.

Example:
  >>> s = polynomial(0.8, begin=0, end=100, every=25)
  >>> [round(float(s(t)), 4) for t in (0, 24, 25, 50, 75, 100, 1000)]
  [0.0, 0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import cast

import torch

from . import _amount
from ._amount import check_fraction

Step = int | torch.Tensor
Schedule = Callable[[Step], float | torch.Tensor]

__all__ = [
    "Schedule",
    "constant",
    "one_shot",
    "periodic",
    "polynomial",
    "cosine_decay",
    "is_update_step",
    "amount_between",
    "round_amounts",
]


def _step_int(value, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _window(begin, end, every) -> tuple:
    begin, end, every = _step_int(begin, "begin"), _step_int(end, "end"), _step_int(every, "every", 1)
    if begin > end:
        raise ValueError(f"begin={begin} must not be after end={end}")
    return begin, end, every


def _clip(x, lo, hi):
    return x.clamp(lo, hi) if isinstance(x, torch.Tensor) else min(max(x, lo), hi)


def _as_step(step: Step):
    if isinstance(step, torch.Tensor):
        return step.to(torch.float64)
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise TypeError(f"step must be an int or a 0-d tensor, got {step!r}")
    return step


def _where(cond, a, b):
    if isinstance(cond, torch.Tensor):
        return torch.where(
            cond,
            torch.as_tensor(a, dtype=torch.float64, device=cond.device),
            torch.as_tensor(b, dtype=torch.float64, device=cond.device),
        )
    return a if cond else b


def constant(value: float) -> Schedule:
    """The same value at every step.

    Example:
      >>> constant(0.3)(10)
      0.3
    """
    value = check_fraction(value, "value")
    return lambda step: _where(_as_step(step) >= 0, value, value)


def one_shot(sparsity: float, step: int = 0) -> Schedule:
    """No pruning before ``step``, then ``sparsity`` at once.

    Example:
      >>> s = one_shot(0.9, step=5)
      >>> s(4), s(5)
      (0.0, 0.9)
    """
    sparsity, at = check_fraction(sparsity, "sparsity"), _step_int(step, "step")
    return lambda t: _where(_as_step(t) >= at, sparsity, 0.0)


def _rounds_done(t, begin: int, every: int, rounds: int):
    done = (t - begin) // every + 1
    return _clip(done, 0, rounds)


def periodic(amount: float, begin: int, every: int, rounds: int) -> Schedule:
    """Prune ``amount`` of the survivors every ``every`` steps from ``begin``, ``rounds`` times.

    The schedule is the cumulative sparsity ``1 - (1 - amount) ** r`` after the ``r`` rounds done
    by the step (rounds happen at ``begin``, ``begin + every``, ...), i.e. iterative pruning as in
    the lottery-ticket experiments.

    Example:
      >>> s = periodic(0.5, begin=10, every=10, rounds=3)
      >>> [s(t) for t in (9, 10, 19, 20, 30, 99)]
      [0.0, 0.5, 0.5, 0.75, 0.875, 0.875]
    """
    amount = check_fraction(amount, "amount")
    begin, every, rounds = _step_int(begin, "begin"), _step_int(every, "every", 1), _step_int(rounds, "rounds")

    def schedule(step: Step):
        done = _rounds_done(_as_step(step), begin, every, rounds)
        return 1.0 - (1.0 - amount) ** done

    return schedule


def polynomial(
    final: float, begin: int, end: int, every: int = 1, initial: float = 0.0, power: float = 3.0
) -> Schedule:
    """Gradual magnitude pruning of Zhu & Gupta (2017): sparsity rises as a polynomial, then stays.

    At update steps ``t = begin, begin + every, ...`` up to ``end`` the target is
    ``final + (initial - final) * (1 - (t - begin) / (end - begin)) ** power``; ``end`` itself is
    an update step too (also off the grid, when ``every`` does not divide ``end - begin``), with
    target ``final``. Between updates the target holds the last update's value, before ``begin``
    it is ``initial``. These are the steps :func:`is_update_step` accepts, so pruning to
    ``schedule(step)`` at them ends at exactly ``final``.

    Args:
      final: sparsity reached at ``end``. initial: sparsity at ``begin``.
      begin, end: first and last pruning steps (``begin <= end``; equal means one-shot).
      every: steps between updates (the paper's ``Δt``). power: 3 in the paper.

    Raises:
      ValueError: ``begin > end``, ``every < 1``, fractions outside ``[0, 1]``, ``power <= 0``.

    Example:
      >>> polynomial(0.5, begin=0, end=10)(5)
      0.4375
      >>> s = polynomial(0.95, begin=5, end=65, every=7)
      >>> round(s(61), 4), s(64), s(65)     # 61 is the grid's last step; 65 (end) is an update too
      (0.9497, 0.9497185185185184, 0.95)
    """
    final, initial = check_fraction(final, "final"), check_fraction(initial, "initial")
    begin, end, every = _window(begin, end, every)
    if isinstance(power, bool) or not isinstance(power, numbers.Real) or power <= 0:
        raise ValueError(f"power must be a positive number, got {power!r}")
    span = end - begin

    def schedule(step: Step):
        t = _as_step(step)
        if span == 0:
            return _where(t >= begin, final, initial)
        last = begin + every * ((_clip(t, begin, end) - begin) // every)
        # Written from `initial` so the first update gives `initial` exactly (no float drift below it).
        value = initial + (final - initial) * (1.0 - (1.0 - (last - begin) / span) ** power)
        return _where(t >= end, final, _where(t >= begin, value, initial))

    return schedule


def cosine_decay(initial: float, steps: int, final: float = 0.0) -> Schedule:
    """Cosine annealing from ``initial`` to ``final`` over ``steps`` (RigL's drop-fraction schedule).

    Example:
      >>> f = cosine_decay(0.3, steps=100)
      >>> f(0), round(f(50), 6), f(100), f(200)
      (0.3, 0.15, 0.0, 0.0)
    """
    initial, final = check_fraction(initial, "initial"), check_fraction(final, "final")
    steps = _step_int(steps, "steps", 1)

    def schedule(step: Step):
        t = _clip(_as_step(step), 0, steps)
        cos = torch.cos(math.pi * t / steps) if isinstance(t, torch.Tensor) else math.cos(math.pi * t / steps)
        return final + (initial - final) * 0.5 * (1.0 + cos)

    return schedule


def is_update_step(step: Step, begin: int, end: int, every: int = 1):
    """Whether masks change at ``step``: on the grid ``begin, begin + every, ...`` up to ``end``, and ``end``.

    ``end`` is always an update step, also when ``end - begin`` is not a multiple of ``every``, so
    a loop that prunes to ``schedule(step)`` at these steps ends at exactly the schedule's final
    value (:func:`polynomial` reaches ``final`` at ``end``).

    Example:
      >>> [t for t in range(12) if is_update_step(t, 2, 8, 3)]
      [2, 5, 8]
      >>> [t for t in range(12) if is_update_step(t, 2, 9, 3)]
      [2, 5, 8, 9]
    """
    begin, end, every = _window(begin, end, every)
    on_grid = ((step - begin) % every == 0) | (step == end)
    return (step >= begin) & (step <= end) & on_grid


def _counts(current, total):
    """``(pruned, total)`` counts from a :class:`funcprune.Sparsity`-like ``current`` or ``total``."""
    if hasattr(current, "pruned") and hasattr(current, "total"):  # fp.sparsity(...): exact counts
        total = current.total if total is None else total
        if total != current.total:
            raise ValueError(f"total={total!r} differs from the {current.total} entries current counts")
        pruned = current.pruned
    elif total is None:
        return None
    else:
        pruned = None
    if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 0:
        raise ValueError(f"total must be an int >= 0 (the entries the sparsity is over), got {total!r}")
    total = int(total)
    if pruned is None:  # a measured fraction: back to the count it was measured from
        if isinstance(current, torch.Tensor):
            pruned = torch.round(current.to(torch.float64) * total).to(torch.int64)
        else:
            pruned = round(check_fraction(current, "current") * total)
    if isinstance(pruned, torch.Tensor) and pruned.dim() == 0 and _amount.is_concrete(pruned):
        pruned = int(pruned)
    return pruned, total


def _exact_amount(pruned, total: int, target):
    """The amount that takes ``pruned`` of ``total`` to exactly ``prune_count(target, total)`` pruned."""
    if isinstance(pruned, torch.Tensor) or isinstance(target, torch.Tensor):
        device = (target if isinstance(target, torch.Tensor) else pruned).device
        pruned = torch.as_tensor(pruned, dtype=torch.int64, device=device)
        goal = _amount.prune_count(torch.as_tensor(target, dtype=torch.float64, device=device).clamp(0, 1), total)
        alive = total - pruned
        more = (goal - pruned).clamp(min=0)
        # more / alive is within an ulp of the ratio, so round(amount * alive) gives back `more` exactly
        return torch.where(alive > 0, more.to(torch.float64) / alive.clamp(min=1).to(torch.float64), 0.0)
    if not 0 <= pruned <= total:
        raise ValueError(f"current={pruned} pruned is outside [0, total={total}]")
    target = check_fraction(target, "target")
    more, alive = max(_amount.prune_count(target, total) - pruned, 0), total - pruned
    # fl(more / alive) * alive is within an ulp of the integer `more`, so it rounds back to it
    return more / alive if alive else 0.0


def amount_between(current, target, *, total=None):
    """The survivor-relative ``amount`` that takes sparsity ``current`` to ``target``.

    With counts -- ``current`` a :class:`funcprune.Sparsity` (what :func:`funcprune.sparsity`
    returns) or ``total=`` the number of entries the sparsity is over -- it is exact: pruning
    ``amount`` of the ``total - pruned`` survivors (funcprune's and torch's rule,
    ``round(amount * alive)``) leaves exactly ``round(target * total)`` pruned (the count one-shot
    pruning to ``target`` gives), however the previous rounds rounded. A target already reached
    gives 0 (pruning cannot lower sparsity).

    From fractions alone it is ``(target - current) / (1 - current)``, exact except where
    ``target * total`` is a half-integer: there the right amount depends on ``total``, which two
    fractions do not determine (at ``current = 0.5``, ``target = 0.75`` it prunes the one
    survivor of 2 entries but one of the 3 survivors of 6), so pass counts when exactness matters.

    Args:
      current: the measured sparsity: a float or 0-d tensor in ``[0, 1]``, or a ``Sparsity``.
      target: the cumulative sparsity to reach (float or tensor; ``schedule(step)``).
      total: keyword-only, the number of entries ``current`` is measured over (a float
        ``current`` is rounded to a count of them; a float32 fraction is exact below 2**24).

    Returns:
      A float (a float64 0-d tensor where ``current``, its counts or ``target`` are tensors).

    Raises:
      ValueError: a number outside ``[0, 1]`` (tensors are clamped instead), a bad ``total``.

    Example:
      >>> amount_between(0.5, 0.75)
      0.5
      >>> amount_between(332 / 997, 0.5, total=997) * 665   # 166 more: 498 = round(498.5) pruned
      166.0
    """
    counts = _counts(current, total)
    if counts is not None:
        return _exact_amount(counts[0], counts[1], target)
    if isinstance(current, torch.Tensor) or isinstance(target, torch.Tensor):
        current = torch.as_tensor(current, dtype=torch.float64)
        target = torch.as_tensor(target, dtype=torch.float64, device=current.device)
        room = 1.0 - current
        return torch.where(room > 0, (target - current).clamp(min=0) / room.clamp(min=1e-300), 0.0).clamp(0, 1)
    current, target = check_fraction(current, "current"), check_fraction(target, "target")
    if target <= current:  # e.g. a measured sparsity that rounded past the target: nothing to prune
        return 0.0
    # The ratio of the two floats computed exactly, then rounded once.
    return min(float((Fraction(target) - Fraction(current)) / (1 - Fraction(current))), 1.0)


def round_amounts(targets: Sequence[float], *, total: int | None = None) -> list[float]:
    """Per-round amounts that reach the cumulative sparsities ``targets`` one after the other.

    With ``total`` (the number of entries pruned) the rounds land exactly on
    ``round(targets[r] * total)`` pruned each (:func:`amount_between` on the counts). Without it,
    ``1 - targets[-1] == prod(1 - a)``, so when each ``targets[r] * n`` is a whole number the rounds
    land on it exactly; otherwise pass ``total`` or use :func:`amount_between` on the measured
    sparsity.

    Raises:
      ValueError: a target outside ``[0, 1]``, a decreasing sequence, a bad ``total``.

    Example:
      >>> [round(a, 4) for a in round_amounts([0.2, 0.4, 0.6, 0.8])]
      [0.2, 0.25, 0.3333, 0.5]
      >>> round_amounts([0.25, 0.5], total=6)    # 2 of 6 (round(1.5)), then 1 of 4 (round(3.0))
      [0.3333333333333333, 0.25]
    """
    amounts, current, pruned = [], 0.0, 0
    for r, target in enumerate(targets):
        target = check_fraction(target, f"targets[{r}]")
        if target < current:
            raise ValueError(f"targets must not decrease: targets[{r}]={target} < {current}")
        if total is None:
            amounts.append(amount_between(current, target))
        else:
            amounts.append(_exact_amount(pruned, _counts(0.0, total)[1], target))
            pruned = max(pruned, cast(int, _amount.prune_count(target, total)))  # a float of an int: an int
        current = target
    return amounts
