"""Sharded mask checkpoints through torch.distributed.checkpoint load bit-exact anywhere, on real gloo ranks.

Saved from 2 ranks, loaded into 4 (other placements), into a 2-D HSDP mesh and into one process;
saved from the HSDP mesh, loaded into 2: bit-exact every time. Three launches in all (2, 4, 2 ranks).
"""

import json
import os
import re

import pytest
import torch

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch without distributed support", allow_module_level=True)

import torch.distributed.checkpoint as dcp  # noqa: E402

from funcprune._bits import pack_last  # noqa: E402
from funcprune._dcp import HEADER, PREFIX, _dcp_call, load_masks_dcp, save_masks_dcp  # noqa: E402
from tests import _dist_ckpt as W  # noqa: E402
from tests._dist import run_ranks  # noqa: E402

# Stored as bool where the last dim is sharded on save (or the mask is 0-D), packed otherwise.
STORED_BOOL = {"b.weight", "d.bias", "g.scale"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcp")
    path_1d, path_hsdp = str(root / "world2"), str(root / "hsdp")
    saved = run_ranks(W.save_1d, 2, path_1d)
    loaded = run_ranks(W.load_4_and_save_hsdp, 4, path_1d, path_hsdp)
    return {"1d": path_1d, "hsdp": path_hsdp, "saved": saved, "loaded": loaded}


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_saved_layout_packs_bits_along_the_last_dim_unless_it_is_sharded(checkpoints):
    saved = checkpoints["saved"]
    assert saved[0]["d.bias"] == [1] and saved[1]["d.bias"] == [0]  # an empty local shard
    assert saved[0]["a.weight"] == [4, 13] and saved[1]["a.weight"] == [3, 13]  # uneven
    meta = dcp.FileSystemReader(checkpoints["1d"]).read_metadata().state_dict_metadata
    full = W.expected()
    for name, mask in full.items():
        stored = meta[PREFIX + name]
        if name in STORED_BOOL:
            assert stored.properties.dtype == torch.bool and tuple(stored.size) == tuple(mask.shape), name
        else:
            assert stored.properties.dtype == torch.uint8, name
            assert tuple(stored.size) == (*mask.shape[:-1], -(-mask.shape[-1] // 8)), name
    assert HEADER in meta


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_two_ranks_load_into_four_and_into_a_2d_mesh_bit_exact(checkpoints):
    for rank, result in enumerate(checkpoints["loaded"]):
        for layout in ("1d", "hsdp_load"):
            assert set(result[layout]) == set(W.expected()), (rank, layout)
            bad = {name: r for name, r in result[layout].items() if not r[0]}
            assert not bad, (rank, layout, bad)
    one_d = [r["1d"] for r in checkpoints["loaded"]]
    assert [r["d.bias"][1] for r in one_d] == [[1], [0], [0], [0]]  # empty local shards on load
    assert [r["f.weight"][1] for r in one_d] == [[1, 17], [1, 17], [0, 17], [0, 17]]
    assert [r["e.weight"][1] for r in one_d] == [[6, 5]] * 4  # packed on save, sharded last dim on load
    assert [r["a.weight"][1] for r in one_d] == [[2, 13], [2, 13], [2, 13], [1, 13]]


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_errors_reach_every_rank_before_anything_is_written(checkpoints):
    for rank, result in enumerate(checkpoints["loaded"]):
        errors = result["errors"]
        assert errors["not_01"] == "ValueError: x: mask values must be 0 or 1 to round-trip as bits", rank
        assert errors["partial"].startswith("ValueError: x: placement P(sum) is not supported in a mask checkpoint"), (
            rank
        )
        for key, there in (("save_masks", "save_masks_dcp"), ("load_masks", "load_masks_dcp")):
            assert errors[key].startswith("TypeError: x: "), (rank, errors[key])
            assert f"funcprune.distributed.{there}" in errors[key], (rank, errors[key])
    assert not os.path.exists(checkpoints["hsdp"] + "-bad")


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
def test_hsdp_checkpoint_loads_into_a_1d_mesh_of_two(checkpoints):
    for rank, result in enumerate(run_ranks(W.load_2_from_hsdp, 2, checkpoints["hsdp"])):
        assert set(result) == set(W.expected())
        assert not {name: r for name, r in result.items() if not r[0]}, rank


@pytest.mark.slow  # multi-process: real gloo ranks (the module's fixture)
@pytest.mark.parametrize("which", ["1d", "hsdp"])
def test_sharded_checkpoints_load_into_one_process_as_plain_tensors(checkpoints, which):
    full = W.expected()
    like = {name: torch.zeros(mask.shape) for name, mask in full.items()}
    loaded = load_masks_dcp(like, checkpoints[which])
    assert set(loaded) == set(full)
    for name, mask in loaded.items():
        assert type(mask) is torch.Tensor and mask.dtype == torch.bool and torch.equal(mask, full[name]), name


def test_one_process_round_trip_and_errors(tmp_path):
    g = torch.Generator().manual_seed(0)
    masks = {"w": torch.rand(3, 19, generator=g) < 0.5, "nested": {"b": torch.rand(5, generator=g) < 0.5}}
    save_masks_dcp(masks, str(tmp_path / "c"))
    like = {"w": torch.zeros(3, 19), "nested": {"b": torch.zeros(5)}, "other": torch.zeros(2)}
    loaded = load_masks_dcp(like, str(tmp_path / "c"))
    assert set(loaded) == {"w", "nested"} and torch.equal(loaded["w"], masks["w"])
    assert torch.equal(loaded["nested"]["b"], masks["nested"]["b"])
    with pytest.raises(ValueError, match=r"w: checkpoint mask has shape \(3, 19\) but the param has shape \(3, 18\)"):
        load_masks_dcp({"w": torch.zeros(3, 18), "nested": {"b": torch.zeros(5)}}, str(tmp_path / "c"))
    with pytest.raises(KeyError, match=r"checkpoint name\(s\) \['nested.b'\] are not among the params"):
        load_masks_dcp({"w": torch.zeros(3, 19)}, str(tmp_path / "c"))
    with pytest.raises(ValueError, match="not a readable funcprune DCP mask checkpoint"):
        load_masks_dcp(like, str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="x: a mask must be a tensor, got int"):
        save_masks_dcp({"x": 3}, str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"x: cannot save a mask without values \(device meta\)"):
        save_masks_dcp({"x": torch.ones(2, device="meta", dtype=torch.bool)}, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    # A shard whose content does not match the saved count (here: a forged header) is refused.
    header = {
        "format": "funcprune.masks.dcp",
        "version": 1,
        "leaves": {"w": {"shape": [3, 19], "packed": True, "kept": int(masks["w"].sum()) + 1}},
    }
    _dcp_call(
        "save",
        {HEADER: json.dumps(header), PREFIX + "w": torch.zeros(3, 3, dtype=torch.uint8)},
        str(tmp_path / "forged"),
        None,
    )
    with pytest.raises(ValueError, match=r"w: the loaded mask keeps 0 entries but \d+ were saved"):
        load_masks_dcp({"w": torch.zeros(3, 19)}, str(tmp_path / "forged"))
    _dcp_call("save", {HEADER: json.dumps({"format": "other"})}, str(tmp_path / "other"), None)
    with pytest.raises(ValueError, match="not a funcprune DCP mask checkpoint"):
        load_masks_dcp(like, str(tmp_path / "other"))


def test_packing_matches_numpy_packbits_along_the_last_dim():
    np = pytest.importorskip("numpy")
    from funcprune._bits import pack_last, unpack_last

    g = torch.Generator().manual_seed(1)
    for shape in [(1,), (8,), (9,), (3, 0), (2, 3, 17), (4, 16)]:
        mask = torch.rand(shape, generator=g) < 0.5
        bits = pack_last(mask)
        assert torch.equal(bits, torch.from_numpy(np.packbits(mask.numpy(), axis=-1))), shape
        assert torch.equal(unpack_last(bits, shape[-1]), mask), shape


def _rotated(byte: int) -> int:
    """The byte's bits rotated by one: the same number of ones, other entries."""
    return ((byte << 1) | (byte >> 7)) & 0xFF


def test_bits_moved_inside_a_shard_with_the_same_kept_count_are_refused(tmp_path):
    """A damaged shard whose kept count is unchanged (two bits of a byte swapped) raises, naming the leaf and
    the shard, instead of loading 2 wrong entries."""
    g = torch.Generator().manual_seed(5)
    masks = {"w": torch.rand(4, 64, generator=g) < 0.5, "v": torch.rand(3, 5, generator=g) < 0.5}
    path = tmp_path / "c"
    save_masks_dcp(masks, str(path))
    like = {"w": torch.zeros(4, 64), "v": torch.zeros(3, 5)}
    assert torch.equal(load_masks_dcp(like, str(path))["w"], masks["w"])
    packed = pack_last(masks["w"]).reshape(-1).tolist()
    [data] = [f for f in path.iterdir() if f.suffix == ".distcp" and bytes(packed) in f.read_bytes()]
    raw = bytearray(data.read_bytes())
    assert raw.count(bytes(packed)) == 1
    at = raw.index(bytes(packed))
    i = next(i for i, b in enumerate(packed) if _rotated(b) != b)
    raw[at + i] = _rotated(packed[i])
    data.write_bytes(bytes(raw))
    with pytest.raises(
        ValueError,
        match=r"w: the shard written by rank 0 \(offset \[0, 0\], shape \[4, 64\]\) does "
        r"not match its checksum",
    ):
        load_masks_dcp(like, str(path))


def test_a_directory_mixing_files_of_two_saves_is_refused_on_every_rank(tmp_path):
    """Rank 1's file from another save (a save that did not finish over an older one), with the same
    per-shard kept counts: every rank, and a one-process load, raise naming a rank whose shards are of
    another save than the metadata (DCP may store the metadata's header in either rank's file)."""
    import shutil

    a, b, mixed = str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "mixed")
    run_ranks(W.two_saves, 2, a, b)
    shutil.copytree(a, mixed)
    shutil.copy(os.path.join(b, "__1_0.distcp"), os.path.join(mixed, "__1_0.distcp"))
    assert run_ranks(W.load_or_error, 2, a) == ["loaded", "loaded"]
    for rank, message in enumerate(run_ranks(W.load_or_error, 2, mixed)):
        assert re.search(r"the shards written by rank [01] belong to another save", message), (rank, message)
    with pytest.raises(ValueError, match="the shards written by rank [01] belong to another save"):
        load_masks_dcp({"w": torch.zeros(8, 12)}, mixed)
