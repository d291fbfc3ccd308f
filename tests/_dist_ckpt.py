"""Rank workers of tests/test_distributed_ckpt.py (DCP mask checkpoints), run through tests/_dist.py."""

from __future__ import annotations

import torch

# name: (full shape, placements of the 1-D save layout (world 2), placements of the 1-D load layout)
# Covered: uneven shards (7 rows over 2 and 4, 17 columns), Shard(1) of a 2-D mask (last dim sharded:
# stored as bool) and of a 4-D one (packed), 1-D masks sharded (bool) with empty local shards
# (1 entry over 2 or 4 ranks), Replicate, a 0-D mask, an empty mask, a last dim that is packed on
# save but sharded on load (read replicated, sliced), and a plain-tensor leaf.
LEAVES = {
    "a.weight": ((7, 13), "S0", "S0"),
    "b.weight": ((5, 9), "S1", "S0"),
    "c.weight": ((3, 4, 6, 5), "S1", "S2"),
    "d.bias": ((1,), "S0", "S0"),
    "e.weight": ((6, 20), "R", "S1"),
    "f.weight": ((2, 17), "S0", "S0"),
    "g.scale": ((), "R", "R"),
    "h.weight": ((0, 5), "S0", "S1"),
    "i.weight": ((9, 3), "S0", "R"),
}
PLAIN = "plain.weight"


def expected() -> dict[str, torch.Tensor]:
    """The full masks every layout saves and loads (seeded; the same in every process)."""
    g = torch.Generator().manual_seed(13)
    out = {name: torch.rand(shape, generator=g) < 0.4 for name, (shape, _, _) in LEAVES.items()}
    out[PLAIN] = torch.rand(4, 11, generator=g) < 0.5
    return out


def _placement(code: str):
    from torch.distributed.tensor import Replicate, Shard

    return Replicate() if code == "R" else Shard(int(code[1:]))


def _tree(mesh, column: int, mesh_2d: bool = False) -> dict[str, torch.Tensor]:
    """The expected masks as DTensors laid out by column 1 (save) or 2 (load) of LEAVES."""
    from torch.distributed.tensor import Replicate, distribute_tensor

    full = expected()
    out = {}
    for name, spec in LEAVES.items():
        placement = _placement(spec[column])
        placements = [Replicate(), placement] if mesh_2d else [placement]
        out[name] = distribute_tensor(full[name], mesh, placements)
    out[PLAIN] = full[PLAIN]
    return out


def _report(loaded: dict[str, torch.Tensor], like: dict[str, torch.Tensor]) -> dict[str, list]:
    """Per leaf: bit-exact against expected(), same placements and local shape as ``like``, bool."""
    from funcprune._dtensor import is_dtensor

    full = expected()
    out = {}
    for name, mask in loaded.items():
        target = like[name]
        if is_dtensor(target):
            ok = (
                is_dtensor(mask)
                and tuple(mask.placements) == tuple(target.placements)
                and mask.to_local().shape == target.to_local().shape
                and mask.dtype == torch.bool
                and torch.equal(mask.full_tensor(), full[name])
            )
            local = list(mask.to_local().shape)
        else:
            ok = not is_dtensor(mask) and mask.dtype == torch.bool and torch.equal(mask, full[name])
            local = list(mask.shape)
        out[name] = [bool(ok), local]
    return out


def save_1d(rank: int, world: int, path: str) -> dict:
    """World 2, 1-D mesh: save the save-layout tree (one leaf as 0/1 floats)."""
    from torch.distributed.device_mesh import init_device_mesh

    from funcprune.distributed import save_masks_dcp

    mesh = init_device_mesh("cpu", (world,))
    tree = _tree(mesh, 1)
    tree["i.weight"] = tree["i.weight"].float()  # a 0/1 float mask loads back as bool
    save_masks_dcp(tree, path)
    return {name: list(t.to_local().shape) for name, t in tree.items() if hasattr(t, "to_local")}


def load_4_and_save_hsdp(rank: int, world: int, path_1d: str, path_hsdp: str) -> dict:
    """World 4: load the 2-rank checkpoint into a 1-D mesh (other placements) and into a 2-D HSDP
    mesh; then save from the HSDP mesh; plus the errors that must reach every rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard

    import funcprune as fp
    from funcprune.distributed import load_masks_dcp, save_masks_dcp

    out = {}
    mesh = init_device_mesh("cpu", (world,))
    like = _tree(mesh, 2)
    like = {name: (t.float() if name == "a.weight" else t) for name, t in like.items()}  # any dtype as layout
    out["1d"] = _report(load_masks_dcp(like, path_1d), like)
    hsdp = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    like_2d = _tree(hsdp, 2, mesh_2d=True)
    out["hsdp_load"] = _report(load_masks_dcp(like_2d, path_1d), like_2d)
    save_masks_dcp(_tree(hsdp, 1, mesh_2d=True), path_hsdp)
    errors = {}
    # Only rank 3 holds a value other than 0/1: every rank must raise, none may wait in DCP.
    row = torch.tensor([[0.0, 1.0, 0.5]]) if rank == 3 else torch.ones(1, 3)
    bad = DTensor.from_local(row, mesh, [Shard(0)], run_check=False, shape=torch.Size((4, 3)), stride=(3, 1))
    for key, call in (
        ("not_01", lambda: save_masks_dcp({"x": bad}, path_hsdp + "-bad")),
        (
            "partial",
            lambda: save_masks_dcp(
                {"x": DTensor.from_local(torch.ones(2, 2, dtype=torch.bool), mesh, [Partial()])}, path_hsdp + "-bad"
            ),
        ),
        ("save_masks", lambda: fp.export.save_masks({"x": like["a.weight"]}, path_hsdp + "-bad.pt")),
        ("load_masks", lambda: fp.export.load_masks(path_hsdp + "-bad.pt", like={"x": like["a.weight"]})),
    ):
        try:
            call()
            errors[key] = None
        except (TypeError, ValueError) as err:
            errors[key] = f"{type(err).__name__}: {err}"
    out["errors"] = errors
    return out


def load_2_from_hsdp(rank: int, world: int, path_hsdp: str) -> dict:
    """World 2: load the HSDP checkpoint into a 1-D mesh with the load layout."""
    from torch.distributed.device_mesh import init_device_mesh

    from funcprune.distributed import load_masks_dcp

    mesh = init_device_mesh("cpu", (world,))
    like = _tree(mesh, 2)
    return _report(load_masks_dcp(like, path_hsdp), like)


def two_saves(rank: int, world: int, path_a: str, path_b: str) -> None:
    """World 2: save masks A, then masks B with the same per-shard kept counts (rows reversed), elsewhere."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from funcprune.distributed import save_masks_dcp

    mesh = init_device_mesh("cpu", (world,))
    a = torch.rand(8, 12, generator=torch.Generator().manual_seed(4)) < 0.5
    save_masks_dcp({"w": distribute_tensor(a, mesh, [Shard(0)])}, path_a)
    save_masks_dcp({"w": distribute_tensor(a.flip(-1), mesh, [Shard(0)])}, path_b)


def load_or_error(rank: int, world: int, path: str) -> str:
    """World 2: load ``path`` like a Shard(0) (8, 12) mask; the error, or "loaded"."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from funcprune.distributed import load_masks_dcp

    mesh = init_device_mesh("cpu", (world,))
    try:
        load_masks_dcp({"w": distribute_tensor(torch.zeros(8, 12), mesh, [Shard(0)])}, path)
    except ValueError as err:
        return str(err)
    return "loaded"
