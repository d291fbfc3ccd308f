"""Distributed reliability on real gloo ranks: FSDP2's next forward after masking, ranks that disagree
about a selection, and ranks outside a DTensor's mesh (workers in tests/_dist_checks.py)."""

import pytest

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch without distributed support", allow_module_level=True)

from tests import _dist_checks as W  # noqa: E402
from tests._dist import run_ranks  # noqa: E402

pytestmark = pytest.mark.slow


def test_fsdp2_next_forward_after_masking_is_the_masked_model():
    """apply_masks_, keep_pruned, its update and its post-step hook: after a no-grad evaluation forward
    (FSDP2 keeps unsharded copies: the root by default, reshard_after_forward=False groups), the next
    forward equals the single-process masked model, never the dense one."""
    for rank, result in enumerate(run_ranks(W.fsdp_next_forward_masked, 2)):
        for case, (masked, dense) in result.items():
            assert (masked, dense) == (True, False), (rank, case)


def test_ranks_that_disagree_about_a_global_selection_all_raise_naming_what_differs():
    """Another amount, tree, prior masks, dtype or method on one rank: a ValueError on every rank (in bounded
    time: a dtype difference used to desynchronize the histogram passes and hang), naming the part."""
    results = run_ranks(W.disagreeing_ranks, 2, timeout=120)
    expect = {
        "amount": "amount (amounts on the ranks span 0.3 .. 0.7)",
        "tree": "leaf names",
        "masks": "prior masks",
        "dtype": "dtypes",
        "method": "method",
        "prune_l1": "amount",
    }
    for rank, result in enumerate(results):
        for case, part in expect.items():
            assert result[case].startswith(f"the ranks of one global selection disagree about its {part}"), (
                rank,
                case,
                result[case],
            )
    assert sum(result["agreeing"] for result in results) == 55  # ranks that agree: half of 110 entries kept


def test_a_rank_outside_the_mesh_gets_empty_local_masks_and_counting_there_raises():
    """World 3, mesh on ranks 0-1: the mesh's ranks get the one-process masks; the third rank gets masks laid
    out like the params with empty local shards (as DTensor ops give it), with no communication; sparsity
    there raises a ValueError naming the rank and the mesh (it holds no entries to count)."""
    results = run_ranks(W.outside_the_mesh, 3, timeout=240)
    cases = ["global_l1", "global_l1_prior", "global_random", "prune_l1", "ln_structured", "random_structured"]
    for rank in (0, 1):
        assert all(results[rank][case] is True for case in cases), (rank, results[rank])
        assert results[rank]["sparsity"] == 0.5, rank
    outside = results[2]
    assert outside["global_l1"] == [("a", True, (5, 4), 0), ("b", True, (6,), 0)]
    for case in cases:
        assert all(is_dt and local == 0 for _, is_dt, _, local in outside[case]), (case, outside[case])
    assert outside["sparsity"].startswith("rank 2 is not in the mask's device mesh"), outside["sparsity"]
