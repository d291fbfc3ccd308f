"""One-shot pruning over torch.distributed on real gloo process groups (2 and 4 ranks).

Each launch runs many checks inside the ranks (tests/_dist_oneshot.py): a distributed result must equal
the one-process result on all the calibration batches, computed in the same rank. A launch costs
tens of seconds (fresh processes importing transformers), so there are few.
"""

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo", allow_module_level=True)

from tests import _dist_oneshot  # noqa: E402
from tests._dist import run_ranks  # noqa: E402

pytestmark = pytest.mark.slow


def _checks(results, expected):
    first = results[0]["checks"]
    assert all(r["checks"] == first for r in results), "ranks disagree on what they checked"
    missing = set(expected) - set(first)
    assert not missing, f"checks that never ran: {missing}"
    assert all(count > 0 for count in first.values())
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_block_selection_over_row_shards_is_the_global_cut(world):
    # k = round(amount * alive entries of the whole block), smallest keys first, ties to the lowest
    # flat index of the full block, whatever the row sharding (uneven; an empty shard on 4 ranks).
    _checks(
        run_ranks(_dist_oneshot.selection, world),
        {"block_keep:randn", "block_keep:ties", "block_keep_too_many", "rows_not_dim0"},
    )


def test_ranks_that_disagree_raise_on_every_rank():
    _checks(
        run_ranks(_dist_oneshot.agreement, 2, timeout=120),
        {"same", "amount_differs", "layers_differ", "method_differs", "batches_differ", "empty_calibration"},
    )


@pytest.mark.parametrize("reshard_after_forward", [True, False])
def test_fsdp_block_runs_on_pruned_shards_then_is_restored(reshard_after_forward):
    # the pruned block's outputs equal the plain block's on the full pruned weights, bit for bit,
    # with one batch more on rank 0 (no collective per batch), even when a previous forward left
    # the block gathered; the block's sharded parameters are the dense ones afterwards.
    _checks(
        run_ranks(_dist_oneshot.runner, 2, reshard_after_forward),
        {"runner_equals_plain", "restored", "dense_after", "runner_plain_for_fsdp"},
    )


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_rows_prune_like_one_process(world):
    # Shard(0) rows (uneven; an empty shard on 4 ranks), float32 and float64, prior masks, 2:4,
    # dead inputs (zero columns: tied scores at a block's cut): Wanda's and magnitude's masks and
    # SparseGPT's masks equal one process's on the full weight; SparseGPT's weights to round-off.
    results = _checks(
        run_ranks(_dist_oneshot.layers, world, timeout=300), {"wanda", "magnitude", "sparsegpt", "columns_sharded"}
    )
    worst = results[0]["worst"]
    print(f"\nworld {world}: SparseGPT weights, max |sharded - one process| / max |W|: {worst}")
    assert worst["sparsegpt_float64"] <= 1e-12 and worst["sparsegpt_float32"] <= 1e-5


def _report(title, results):
    worst = results[0]["worst"]
    print(f"\n{title}: max |distributed - one process| / max |W| over the pruned weights")
    for tag in sorted(worst):
        print(f"  {tag:32s} {worst[tag]:.1e}")
    return worst


def _within_round_off(worst):
    for tag, gap in worst.items():
        assert gap <= (1e-12 if tag.endswith("float64") else 1e-4), (tag, gap)
        if not tag.split(":")[0].endswith("sparsegpt"):
            assert gap == 0.0, tag  # the other methods do not change a weight


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_calibration_equals_one_process_with_all_batches(world):
    # each rank passes its share (uneven) of the batches; Llama and GPT-2 (4 ranks: Llama), float64
    # and float32; Wanda/SparseGPT unstructured and 2:4, one dense pass, OWL, K levels, magnitude:
    # masks equal bit for bit, every rank holds the same result, SparseGPT's weights to round-off;
    # ranks passing different amounts, methods or layers, or an empty calibration: ValueError on all.
    kinds = ("llama", "gpt2") if world == 2 else ("llama",)
    results = _checks(
        run_ranks(_dist_oneshot.data_parallel, world, kinds, timeout=600),
        {
            "wanda",
            "sparsegpt",
            "magnitude",
            "ranks_identical",
            "amount_differs",
            "method_differs",
            "layers_differ",
            "empty_on_one_rank",
        },
    )
    _within_round_off(_report(f"data-parallel, {world} ranks", results))


FSDP_CHECKS = {
    "fsdp_wanda",
    "fsdp_wanda_owl",
    "fsdp_sparsegpt",
    "fsdp_magnitude",
    "fsdp_unchanged",
    "fsdp_device_refused",
    "fsdp_conv1d_refused",
}


@pytest.mark.parametrize("world", [2, 3, 4])
def test_fsdp2_sharded_rows_prune_like_one_process(world):
    # 3 ranks: rows that do not divide (FSDP2 pads its shard storage: 32 rows as 11 + 11 + 10).
    # fully_shard on every block and the root (Shard(0) rows, uneven batch shares): masks equal one
    # process's on the plain model with all the batches, SparseGPT's weights to round-off, masks
    # laid out like the weights (OWL's outlier ratios counted over the shards), the model unchanged;
    # device= and GPT-2's Conv1D (sharded on inputs) refused.
    results = _checks(
        run_ranks(_dist_oneshot.fsdp, world, timeout=600),
        FSDP_CHECKS,
    )
    _within_round_off(_report(f"FSDP2, {world} ranks", results))


def test_hsdp_replicated_shards_prune_like_one_process():
    # a (2, 2) mesh: FSDP2 shards rows over "shard" and replicates over "replicate" ((Replicate(), Shard(0))):
    # replicas count once in every global cut; the statistics are summed over all 4 ranks' batches.
    results = _checks(
        run_ranks(_dist_oneshot.fsdp, 4, (2, 2), timeout=600),
        FSDP_CHECKS,
    )
    _within_round_off(_report("HSDP (2 x 2 mesh)", results))
