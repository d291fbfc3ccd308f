"""examples/distributed.py on 2 spawned gloo ranks: FSDP2-sharded global pruning, masked training,
DCP mask checkpoint loaded back on the ranks and into this process, equal to the saved masks."""

import os

import pytest
import torch

if not torch.distributed.is_available():
    pytest.skip("torch without distributed support", allow_module_level=True)

from examples import distributed  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process: the example spawns gloo ranks


def test_distributed_example_prunes_trains_and_checkpoints(tmp_path, capsys):
    tracked = sorted(os.listdir(os.path.dirname(distributed.__file__)))
    result = distributed.main(world=2, steps=3, out=str(tmp_path))
    assert sorted(os.listdir(os.path.dirname(distributed.__file__))) == tracked  # nothing written there
    total = 32 * 64 + 64 * 48 + 48 * 10
    assert result["world"] == 2 and result["total"] == total
    assert result["pruned"] == round(0.8 * total) == result["one_process_pruned"]
    assert result["local_shapes"]["0.weight"] == (32, 32)  # rank 0 holds half the rows
    assert result["pruned_nonzero"] == 0
    assert result["loaded_equal"] and result["one_process_equal"]
    assert result["checkpoint"] == str(tmp_path / "masks") and os.path.isdir(result["checkpoint"])
    # The sharded run's masks are the one-process masks, and its losses the one-process loop's.
    model = distributed.make_model()
    weights = {n: p.detach() for n, p in model.named_parameters() if n.endswith("weight")}
    import funcprune as fp

    expected = fp.global_unstructured(weights, 0.8)
    assert all(torch.equal(result["one_process_masks"][n], expected[n]) for n in expected)
    assert result["losses"] == pytest.approx(result["reference_losses"], abs=1e-5)
    out = capsys.readouterr().out.splitlines()
    assert (
        out[1] == f"global L1 0.8: pruned {result['pruned']} of {total} (round(0.8 * n) = {result['pruned']}), "
        "no rank gathered a weight"
    )
    assert out[3] == "pruned weights still nonzero after training: 0"
    assert out[-1].endswith("bit-exact to the ranks' masks")
