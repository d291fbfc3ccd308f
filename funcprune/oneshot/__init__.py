"""One-shot pruning of language models from calibration data: Wanda, SparseGPT, OWL, N:M.

Tensor level (pure functions of one weight and its input statistics): :func:`wanda`,
:func:`sparsegpt`, :func:`outlier_ratio`, :func:`owl`. Model level: :func:`prune` runs the
calibration batches block by block through a model's stack of repeated blocks, collects each
linear layer's input statistics (:mod:`funcprune.oneshot.stats`; summed over ranks when
torch.distributed is initialized), prunes, and feeds the pruned block's outputs to the next. The
model is never modified: the result's ``params`` and ``masks`` run through
:func:`funcprune.functional_call`.

Exactness, against the papers' procedures (Wanda's ``prune_wanda``, SparseGPT's ``fasterprune``,
OWL's ``prune_wanda_outlier``) written out in the test suite: given the same statistics, the
tensor functions return the reference's masks (and SparseGPT's weights) bit for bit, in float32
and float64. Two rules differ on purpose: a Wanda row prunes ``round(amount * in_features)``
(torch's rule; the script floors, the same wherever the product is whole) and a SparseGPT block
prunes exactly ``round(amount * entries)`` (the script's ``<=`` threshold prunes one more and
every entry tied with it); ties go to the lower index. On whole models with float64 statistics
the masks are the reference's and the weights agree to ~1e-13; with float32 statistics Wanda's
masks are still identical, while SparseGPT's Hessian differs from the script's by float32
round-off (the sums are accumulated in another order), which can flip a near tie and, through
the weight update, the later choices of that row (a few hundredths of a percent of the
entries on small random models).
"""

from .blocks import find_blocks
from .methods import outlier_ratio, owl, sparsegpt, wanda, wanda_scores
from .model import LayerReport, Result, prune, prune_layer
from .stats import LayerStats, all_reduce

__all__ = [
    "wanda",
    "wanda_scores",
    "sparsegpt",
    "outlier_ratio",
    "owl",
    "prune",
    "prune_layer",
    "find_blocks",
    "Result",
    "LayerReport",
    "LayerStats",
    "all_reduce",
]
