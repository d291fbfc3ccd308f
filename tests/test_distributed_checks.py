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
