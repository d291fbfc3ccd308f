"""DTensor leaves in the tree API on real gloo process groups: the masks are the single-process masks, bit for bit.

Each launch runs many checks inside the ranks (tests/_dist_core.py): every DTensor mask's
``full_tensor()`` must equal the single-process funcprune result on the full tensors, bit for bit,
and the selections must not gather (collectives patched to raise) nor send more bytes for a bigger
model. A few launches only: a 2-rank launch costs seconds, a 4-rank one more.
"""

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

from tests import _dist_core  # noqa: E402
from tests._dist import run_ranks  # noqa: E402

UNSTRUCTURED = {
    "global_l1",
    "global_l1_scores",
    "l1_per_tensor",
    "l1_per_tensor_as_l1",
    "global_random",
    "random_unstructured",
    "random_global_rng",
}
STRUCTURED = {"ln_structured", "random_structured", "true_tie"}
TREE = {
    "identity",
    "identity_fresh",
    "custom_from_mask",
    "apply_masks",
    "mask_grads",
    "sparsity",
    "prune_by",
    "masks_for_amounts",
    "masks_for_seeds",
    "masks_for_scores",
    "mixed_tree",
    "plain_mask",
    "custom_method",
    "pools_split_refused",
    "torch_stream",
    "partial",
    "placements_refused",
    "mask_sharded_unlike",
    "mask_replicated",
}

pytestmark = pytest.mark.slow  # multi-process: real gloo ranks


def _check(results, expected):
    first = results[0]
    assert all(r == first for r in results), "ranks disagree on what they checked"
    missing = expected - set(first["checks"])
    assert not missing, f"checks that never ran: {missing}"
    assert all(count > 0 for count in first["checks"].values())
    return first


@pytest.mark.parametrize("world", [2, 4])
def test_one_dim_mesh_matches_one_process(world):
    # Shard(0) uneven, Shard(1), Replicate, an empty shard (3 rows over 4 ranks), all in one tree;
    # ties, NaN/inf, prior masks (one rank's shard fully pruned), importance scores, L1/Ln/random.
    # The tree-level checks run on 2 ranks (and on the 2-D mesh), the selections on both.
    seeds, everything = ((0, 1), True) if world == 2 else ((0,), False)
    expected = UNSTRUCTURED | STRUCTURED | {"gather_free"}
    if everything:
        expected |= TREE | {"prune_channels", "apply_masks_grad", "dtypes_global", "dtypes_l1", "dtypes_ln"}
    out = _check(run_ranks(_dist_core.world_1d, world, seeds, everything, timeout=600), expected)
    sent = out["bytes"]
    # what crosses the wire does not grow with the model: 8x the entries, the same bytes
    # (2 radix passes of 65537 counts; one vector of the ranks' alive counts and the call's fingerprint)
    assert sent["global_l1_bytes_x1"] == sent["global_l1_bytes_x8"] == 2 * 65537 * 8 + 8 * (world + 2 * 6 + 2)
    assert sent["global_random_bytes_x1"] == sent["global_random_bytes_x8"]


def test_hsdp_two_dim_mesh_matches_one_process():
    # (2, 2) mesh: Replicate across "replicate", Shard across "shard"; replicas count once.
    _check(
        run_ranks(_dist_core.world_2d, 4, timeout=600),
        UNSTRUCTURED | STRUCTURED | TREE | {"apply_masks_grad", "dtypes_global", "dtypes_l1", "dtypes_ln"},
    )
