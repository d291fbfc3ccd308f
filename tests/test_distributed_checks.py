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
    expect = {"amount": "amount (amounts on the ranks span 0.3 .. 0.7)", "tree": "leaf names",
              "masks": "prior masks", "dtype": "dtypes", "method": "method", "prune_l1": "amount"}
    for rank, result in enumerate(results):
        for case, part in expect.items():
            assert result[case].startswith(f"the ranks of one global selection disagree about its {part}"), \
                (rank, case, result[case])
    assert sum(result["agreeing"] for result in results) == 55  # ranks that agree: half of 110 entries kept
