"""torch.nn.utils.prune as an oracle: the mask torch computes for the same inputs."""

import torch
import torch.nn.utils.prune as torch_prune


def torch_mask(method: torch_prune.BasePruningMethod, scores: torch.Tensor, mask=None) -> torch.Tensor:
    """Mask of ``method`` on ``scores``: fresh (no mask) or via PruningContainer on top of ``mask``.

    Returns a bool tensor. ``mask`` is cloned because torch's container writes into it in place.
    """
    method._tensor_name = "t"
    if mask is None:
        return method.compute_mask(scores, torch.ones_like(scores)).bool()
    container = torch_prune.PruningContainer()
    container._tensor_name = "t"
    container.add_pruning_method(method)
    return container.compute_mask(scores, mask.to(scores.dtype).clone()).bool()


def outcome(fn):
    """``(result, None)`` or ``(None, exception type)``."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - we compare exception types with the oracle
        return None, type(err)
