"""One-shot pruning of language models from calibration data: Wanda, SparseGPT, OWL, N:M.

Tensor level (pure functions of one weight and its input statistics): :func:`wanda`,
:func:`sparsegpt`, :func:`outlier_ratio`, :func:`owl`. Model level: :func:`prune` runs the
calibration batches block by block through a model's stack of repeated blocks, collects each
linear layer's input statistics (:mod:`funcprune.oneshot.stats`; summed over ranks when
torch.distributed is initialized), prunes, and feeds the pruned block's outputs to the next. The
model is never modified: the result's ``params`` and ``masks`` run through
:func:`funcprune.functional_call`.
"""

from .methods import outlier_ratio, owl, sparsegpt, wanda, wanda_scores
from .model import LayerReport, Result, find_blocks, prune, prune_layer
from .stats import LayerStats, all_reduce

__all__ = ["wanda", "wanda_scores", "sparsegpt", "outlier_ratio", "owl", "prune", "prune_layer", "find_blocks",
           "Result", "LayerReport", "LayerStats", "all_reduce"]
