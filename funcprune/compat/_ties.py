"""torch's order among tied scores: which of several equal values ``torch.nn.utils.prune`` keeps.

The core breaks ties by one documented rule (:mod:`funcprune.select`); compat reproduces torch's
own choice, which depends on every value torch's ``topk`` is given. This is the one place outside
the selection kernel that ranks.
"""

from __future__ import annotations

import torch

from .. import select
from .._amount import is_concrete

__all__ = ["torch_order_select"]


def torch_order_select(
    key: torch.Tensor, k: int, *, largest: bool, alive: torch.Tensor | None = None, unique_first: bool = True
) -> torch.Tensor:
    """Bool mask (``key``'s shape) of the ``k`` alive entries ``torch.nn.utils.prune`` picks, ties included.

    torch's CPU ``topk`` (``aten/src/ATen/native/TopKImpl.h``) runs ``std::nth_element`` (or
    ``std::partial_sort`` when ``64 * k <= n``) over ``(value, index)`` pairs with a comparator
    that looks at the values only (NaN the largest). Which of several equal values it keeps is
    therefore whatever those algorithms leave, and depends on every value of the vector it is
    given. torch gives it the alive entries in index order (``t[mask == 1]``, raveled); so does
    this function, so the choice is torch's, not just the count. Where no tie straddles the cut
    the result is the same for every exact selection, and the certified threshold of
    :func:`funcprune.select.select_flat` answers without ``topk`` (on one fresh vector that
    function is torch's top-k, ties included). ``sorted`` does not change the set ``topk`` picks
    (only the order of the first ``k``), so it is left off. Eager tensors only for ``alive``
    (boolean indexing); on ``meta`` or under transforms it is :func:`funcprune.select.select_flat`.
    Pass ``unique_first=False`` when a tie is known to straddle the cut (skips the threshold try).

    Args:
      key: the scores (any shape; ranked raveled).
      k: how many to pick.
      largest: pick the largest (else the smallest).
      alive: optional bool mask of the candidates (torch's ``mask == 1``).
      unique_first: try the certified threshold before ``topk``.

    Returns:
      A new bool tensor of ``key``'s shape.

    Example:
      >>> torch_order_select(torch.tensor([5.0, 1.0, 2.0, 1.0]), 1, largest=False,
      ...                    alive=torch.tensor([True, False, True, True]))
      tensor([False, False, False,  True])
    """
    if not is_concrete(key) or (alive is not None and not is_concrete(alive)):
        return select.select_flat(
            key.reshape(-1), k, largest=largest, alive=None if alive is None else alive.reshape(-1)
        ).view(key.shape)
    flat = key.reshape(-1)
    live = None if alive is None else alive.reshape(-1)
    cand = flat if live is None else flat[live]  # the vector torch's topk sees
    if unique_first:  # the certified threshold when the answer is unique, else topk on `cand` as torch runs it
        chosen = select.select_flat(cand, k, largest=largest)
    elif k == 0:
        chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device)
    else:
        idx = torch.topk(cand, k, largest=largest, sorted=False).indices
        chosen = torch.zeros(cand.numel(), dtype=torch.bool, device=key.device).index_fill_(0, idx, True)
    if live is None:
        return chosen.view(key.shape)
    return torch.zeros_like(live).masked_scatter_(live, chosen).view(key.shape)
