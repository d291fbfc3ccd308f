"""Rank workers for tests/test_oneshot_distributed.py (run by tests/_dist.py's run_ranks).

Every rank builds the same tiny random model and calibration batches from one seed, takes its share
of the batches (data-parallel) and/or shards the model with FSDP2, prunes, and compares with the
one-process result on all the batches computed in the same rank. Each worker returns
``{check name: count}`` plus measurements and raises on the first mismatch.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

VOCAB = 96


def make_llama(seed: int = 0, layers: int = 2):
    """A tiny random Llama (Linear layers; hidden 32, MLP 48, grouped-query attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(seed: int = 0, layers: int = 2):
    """A tiny random GPT-2 (transformers Conv1D layers; hidden 32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=layers, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg).eval()


def batches(count: int, seed: int = 1, batch: int = 2, tokens: int = 12):
    """``count`` batches of token ids, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, tokens), generator=g) for _ in range(count)]


def share(items, rank: int, world: int):
    """This rank's share: every ``world``-th item from ``rank`` (uneven when ``world`` does not divide)."""
    return items[rank::world]


def shard(full: torch.Tensor, mesh, placements) -> DTensor:
    """This rank's slice of ``full`` as a DTensor (no communication)."""
    shape, offset = compute_local_shape_and_global_offset(full.shape, mesh, placements)
    local = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))].clone()
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=full.shape, stride=full.stride())


def full(t):
    """The full tensor of a DTensor (bool via uint8: gloo gathers bytes); plain tensors as they are."""
    if not isinstance(t, DTensor):
        return t
    return t.to(torch.uint8).full_tensor().bool() if t.dtype == torch.bool else t.full_tensor()


def raises(done: Counter, what: str, exc, fn, *words) -> None:
    """``fn()`` must raise ``exc`` whose message holds every one of ``words``."""
    try:
        fn()
    except exc as err:
        for word in words:
            assert word in str(err), f"{what}: {word!r} not in {err}"
        done[what] += 1
        return
    raise AssertionError(f"{what}: no {exc.__name__}")


# ----------------------------------------------------------------------------------------------
# The global block selection against a reference written here.


def reference_block_keep(key: torch.Tensor, keep, amount) -> torch.Tensor:
    """Drop the ``round(amount * alive)`` (or int ``amount``) smallest alive keys; ties to the lowest flat index."""
    flat = key.reshape(-1).double()
    alive = torch.ones_like(flat, dtype=torch.bool) if keep is None else keep.reshape(-1)
    n = int(alive.sum())
    k = amount if isinstance(amount, int) else round(amount * n)
    order = sorted((float(v), i) for i, (v, a) in enumerate(zip(flat.tolist(), alive.tolist())) if a)
    out = alive.clone()
    for _, i in order[:k]:
        out[i] = False
    return out.view(key.shape)


def selection(rank: int, world: int) -> dict:
    """The exact cut over a block of row shards (uneven, an empty one on 4 ranks) = the reference, ties included."""
    from torch.distributed.device_mesh import init_device_mesh

    from funcprune import _backend

    mesh = init_device_mesh("cpu", (world,))
    done = Counter()
    for rows, cols in ((7, 5), (3, 16), (33, 8)):  # 3 rows over 4 ranks: one rank holds none
        for kind in ("randn", "ties"):
            g = torch.Generator().manual_seed(rows * 100 + cols)
            key = (
                torch.randn(rows, cols, generator=g).abs()
                if kind == "randn"
                else torch.randint(0, 3, (rows, cols), generator=g).float()
            )
            prior = torch.rand(rows, cols, generator=g) > 0.3
            weight = shard(torch.zeros(rows, cols), mesh, [Shard(0)])
            (first, _), (count, _) = _backend.local_block(weight)
            local_rows = slice(first, first + count)

            def block_cut(key_here, keep_here, amount, weight=weight):
                key_rows = _backend.rows_like(key_here, weight)
                keep_rows = None if keep_here is None else _backend.rows_like(keep_here, weight)
                return _backend.local(_backend.global_cut(key_rows, keep_rows, amount, key_rows, largest=False))

            for keep in (None, prior):
                for amount in (0.0, 0.5, 0.9, 1.0, 3):
                    got = block_cut(key[local_rows], None if keep is None else keep[local_rows], amount)
                    want = reference_block_keep(key, keep, amount)
                    assert torch.equal(full(shard(want, mesh, [Shard(0)]).to_local()), want[local_rows])
                    got_full = full(
                        DTensor.from_local(got, mesh, [Shard(0)], run_check=False, shape=key.shape, stride=key.stride())
                    )
                    assert torch.equal(got_full, want), (rows, cols, kind, amount, keep is None)
                    done[f"block_keep:{kind}"] += 1
    ones = shard(torch.ones(world, 2), mesh, [Shard(0)])
    raises(
        done,
        "block_keep_too_many",
        ValueError,
        lambda: _backend.global_cut(ones, None, 10**6, ones, largest=False),
        "1000000",
    )
    raises(
        done,
        "rows_not_dim0",
        ValueError,
        lambda: _backend.check_rows_whole(shard(torch.zeros(4, 8), mesh, [Shard(1)]), "mlp.up"),
        "mlp.up",
        "Shard(0)",
    )
    return {"checks": dict(done)}


def agreement(rank: int, world: int) -> dict:
    """check_same: equal settings pass; a field that differs on one rank raises on every rank, naming it."""
    from funcprune.oneshot.distributed import check_same

    done = Counter()
    check_same(method="wanda", amount=0.5, layers=[("q", (4, 4))])
    done["same"] += 1
    raises(
        done,
        "amount_differs",
        ValueError,
        lambda: check_same(method="wanda", amount=0.5 if rank else 0.6, layers=[("q", (4, 4))]),
        "amount",
    )
    raises(
        done,
        "layers_differ",
        ValueError,
        lambda: check_same(method="wanda", amount=0.5, layers=[("q", (4, 4 + (rank == world - 1)))]),
        "layers",
    )
    raises(
        done,
        "method_differs",
        ValueError,
        lambda: check_same(method="wanda" if rank else "sparsegpt", amount=0.5),
        "method",
    )
    check_same(batches=rank + 1, method="wanda")  # ranks may hold different numbers of batches
    done["batches_differ"] += 1
    raises(done, "empty_calibration", ValueError, lambda: check_same(batches=rank, method="wanda"), "empty calibration")
    dist.barrier()
    return {"checks": dict(done)}


# ----------------------------------------------------------------------------------------------
# FSDP2 blocks run with pruned shards.


def _fsdp(model, mesh, reshard_after_forward=True):
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh)
    return model


def _first_block_inputs(model, calibration):
    """``(args, kwargs)`` of the first block, one per batch (a hook that stops the forward)."""

    class Stop(Exception):
        pass

    caught = []

    def hook(module, args, kwargs):
        caught.append((args, kwargs))
        raise Stop

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for ids in calibration:
                try:
                    model(ids)
                except Stop:
                    pass
    finally:
        handle.remove()
    return caught


def runner(rank: int, world: int, reshard_after_forward: bool) -> dict:
    """block_runner on an FSDP2 block = functional_call of the plain block on the full pruned weights;
    ranks with different numbers of batches; the block's parameters restored afterwards."""
    from torch.distributed.device_mesh import init_device_mesh

    from funcprune.oneshot.distributed import block_runner

    mesh = init_device_mesh("cpu", (world,))
    done = Counter()
    plain = make_llama()
    mine = share(batches(2 * world + 1), rank, world)  # rank 0 holds one batch more
    inputs = _first_block_inputs(plain, mine)
    g = torch.Generator().manual_seed(3)
    pruned = {
        name: p.detach() * (torch.rand(p.shape, generator=g) > 0.5)
        for name, p in plain.model.layers[0].named_parameters()
        if name.endswith("weight") and p.dim() == 2
    }
    with torch.no_grad():
        want = [torch.func.functional_call(plain.model.layers[0], pruned, a, k) for a, k in inputs]
        dense = plain(mine[0]).logits
    model = _fsdp(make_llama(), mesh, reshard_after_forward)
    with torch.no_grad():
        model(mine[0])  # with reshard_after_forward=False the blocks stay gathered: stale for the runner
    block = model.model.layers[0]
    before = {name: full(p).clone() for name, p in block.named_parameters()}
    params = {name: shard(value, mesh, [Shard(0)]) for name, value in pruned.items()}
    with torch.no_grad(), block_runner(block, params) as run:
        got = [run(a, k) for a, k in inputs]
    for w, o in zip(want, got):
        w, o = (w[0], o[0]) if isinstance(w, tuple) else (w, o)
        assert torch.equal(w, o), float((w - o).abs().max())
    done["runner_equals_plain"] += 1
    for name, p in block.named_parameters():
        assert isinstance(p, DTensor) and torch.equal(full(p), before[name]), name
    done["restored"] += 1
    with torch.no_grad():
        assert torch.equal(model(mine[0]).logits, dense)
    done["dense_after"] += 1
    bad = dict(params)
    name = next(iter(bad))
    bad[name] = full(bad[name])
    raises(done, "runner_plain_for_fsdp", ValueError, lambda: block_runner(block, bad).__enter__(), name)
    return {"checks": dict(done)}


# ----------------------------------------------------------------------------------------------
# One layer's rows: sharded prune_layer = one process on the full weight.


class Stats:
    """The all-reduced sums of a layer's inputs (what funcprune.oneshot.stats holds)."""

    def __init__(self, x: torch.Tensor):
        self.sumsq = (x * x).sum(0)
        self.hessian = x.T @ x
        self.tokens = x.shape[0]


def _layer_cases(dtype):
    g = torch.Generator().manual_seed(11)
    for rows, cols, dead in ((10, 32, False), (3, 16, False), (9, 24, True)):
        w = torch.randn(rows, cols, generator=g)
        x = torch.randn(5 * cols, cols, generator=g, dtype=dtype)
        if dead:  # inputs never active: their columns become 0, tied scores at the block's cut
            x[:, ::3] = 0
        prior = torch.rand(rows, cols, generator=g) > 0.25
        yield f"{rows}x{cols}{'_dead' if dead else ''}", w, Stats(x), prior


def layers(rank: int, world: int) -> dict:
    """prune_layer on Shard(0) rows (each rank its own rows, nothing gathered) = the same on the full weight."""
    from torch.distributed.device_mesh import init_device_mesh

    import funcprune as fp
    from funcprune.oneshot import methods, prune_layer

    mesh = init_device_mesh("cpu", (world,))
    done, worst = Counter(), {}
    for dtype in (torch.float32, torch.float64):
        for case, w, stats, prior in _layer_cases(dtype):
            dw = shard(w, mesh, [Shard(0)])
            for keep in (None, prior):
                dkeep = None if keep is None else shard(keep, mesh, [Shard(0)])
                for pattern in (None, (2, 4)):
                    # 0.25: the cut falls inside the tied zeros of the dead inputs
                    for amount in (0.25, 0.5, 0.7) if pattern is None else (0.5,):
                        new, mask = prune_layer(dw, stats, "wanda", amount, pattern=pattern, mask=dkeep)
                        assert new is dw and mask.placements == dw.placements
                        want = methods.wanda(w, stats.sumsq.sqrt(), amount, pattern=pattern, mask=keep)
                        assert torch.equal(full(mask), want), (case, "wanda", pattern, amount)
                        done["wanda"] += 1
                        new, mask = prune_layer(dw, stats, "magnitude", amount, pattern=pattern, mask=dkeep)
                        want = (
                            fp.l1_unstructured(w, amount, mask=keep)
                            if pattern is None
                            else fp.patterns.nm_structured(w, *pattern, 1, mask=keep)
                        )
                        assert torch.equal(full(mask), want), (case, "magnitude", pattern, amount)
                        done["magnitude"] += 1
                        new, mask = prune_layer(
                            dw, stats, "sparsegpt", amount, pattern=pattern, mask=dkeep, block_size=8
                        )
                        want_w, want_m = methods.sparsegpt(
                            w, stats.hessian, amount, pattern=pattern, mask=keep, block_size=8
                        )
                        got_w, got_m = full(new), full(mask)
                        assert new.placements == dw.placements and got_w.dtype == w.dtype
                        assert torch.equal(got_m, want_m), (case, "sparsegpt", pattern, amount, keep is None)
                        assert torch.equal(got_w == 0, ~want_m | (want_w == 0))
                        diff = float((got_w - want_w).abs().max() / want_w.abs().max())
                        key = f"sparsegpt_{str(dtype)[6:]}"
                        worst[key] = max(worst.get(key, 0.0), diff)
                        done["sparsegpt"] += 1
    raises(
        done,
        "columns_sharded",
        ValueError,
        lambda: methods.wanda(shard(torch.randn(4, 8), mesh, [Shard(1)]), torch.ones(8), 0.5),
        "dim 1",
        "Shard(0)",
    )
    return {"checks": dict(done), "worst": worst}


# ----------------------------------------------------------------------------------------------
# Model level: data-parallel calibration and FSDP2 = one process with all the batches.

MODELS = {"llama": make_llama, "gpt2": make_gpt2}
#: (method, amount, keywords): Wanda/SparseGPT, unstructured and 2:4, sequential and one pass, OWL, K levels
CONFIGS = (
    ("wanda", 0.5, {}),
    ("wanda", 0.5, {"pattern": (2, 4)}),
    ("wanda", 0.6, {"sequential": False}),
    ("wanda", 0.7, {"owl": True, "owl_threshold": 2.0}),
    ("sparsegpt", 0.5, {}),
    ("sparsegpt", 0.5, {"pattern": (2, 4)}),
    ("sparsegpt", [0.3, 0.6], {}),
    ("magnitude", 0.5, {}),
)


def _solo_group(rank: int, world: int):
    """A process group of this rank alone (every rank creates every one, as new_group requires)."""
    return [dist.new_group([r]) for r in range(world)][rank]


def _digest(tensors) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(full(tensors[name]).detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _compare(tag, got, want, worst, done):
    """Masks equal bit for bit; SparseGPT's params to round-off (the worst relative gap kept in ``worst``)."""
    assert list(got.masks) == list(want.masks), tag
    for name, mask in want.masks.items():
        assert torch.equal(full(got.masks[name]), mask), (tag, name)
    for name in want.masks:
        g, w = full(got.params[name]).detach(), want.params[name].detach()
        assert g.dtype == w.dtype and g.shape == w.shape, (tag, name)
        gap = float((g.double() - w.double()).abs().max() / w.double().abs().max())
        worst[tag] = max(worst.get(tag, 0.0), gap)
    done[tag.split(":")[0]] += 1


def data_parallel(rank: int, world: int, kinds=tuple(MODELS)) -> dict:
    """prune with each rank's share of the batches = prune on one rank with all of them (a one-rank group)."""
    from funcprune.oneshot import prune

    solo = _solo_group(rank, world)
    done, worst, digests = Counter(), {}, []
    for kind in kinds:
        make = MODELS[kind]
        for dtype in (torch.float64, torch.float32):
            model = make().to(dtype)
            calibration = batches(2 * world + 1)  # uneven shares
            mine = share(calibration, rank, world)
            for method, amount, kw in CONFIGS:
                if kind == "gpt2" and (kw.get("owl") or isinstance(amount, list)):
                    continue  # one model covers OWL and levels
                kw = dict(kw, dtype=dtype, block_size=16)
                got = prune(model, mine, method, amount, **kw)
                want = prune(model, calibration, method, amount, group=solo, **kw)
                _compare(f"{method}:{kind}:{str(dtype)[6:]}", got, want, worst, done)
                digests.append(_digest({**got.masks, **{n: got.params[n] for n in got.masks}}))
    # every rank holds the same result, bit for bit (params included)
    everyone = [None] * world
    dist.all_gather_object(everyone, digests)
    assert all(d == digests for d in everyone), "ranks hold different results"
    done["ranks_identical"] += 1
    # ranks that disagree: a ValueError on every rank, naming what differs, before any statistic is reduced
    model = make_llama()
    mine = share(batches(2 * world), rank, world)
    raises(done, "amount_differs", ValueError, lambda: prune(model, mine, "wanda", 0.5 + 0.1 * (rank == 1)), "amount")
    raises(
        done, "method_differs", ValueError, lambda: prune(model, mine, "wanda" if rank else "sparsegpt", 0.5), "method"
    )
    layers = ["model.layers.0.mlp.up_proj.weight"] + (["model.layers.1.mlp.up_proj.weight"] if rank else [])
    raises(done, "layers_differ", ValueError, lambda: prune(model, mine, "wanda", 0.5, include=layers), "layers")
    raises(
        done,
        "empty_on_one_rank",
        ValueError,
        lambda: prune(model, mine if rank else [], "wanda", 0.5),
        "empty calibration",
    )
    return {"checks": dict(done), "worst": worst}


def fsdp(rank: int, world: int, mesh_shape=None) -> dict:
    """prune on an FSDP2 model (Shard(0) rows) with each rank's share = one process on the plain model, all batches.

    ``mesh_shape`` ``(replicas, shards)``: HSDP (placements ``(Replicate(), Shard(0))``).
    """
    from torch.distributed.device_mesh import init_device_mesh

    from funcprune.oneshot import prune

    solo = _solo_group(rank, world)
    names = ("replicate", "shard") if mesh_shape else None
    mesh = init_device_mesh("cpu", mesh_shape or (world,), mesh_dim_names=names)
    done, worst = Counter(), {}
    for dtype in (torch.float64, torch.float32):
        plain = make_llama().to(dtype)
        dense = {n: p.detach().clone() for n, p in plain.named_parameters()}
        model = _fsdp(make_llama().to(dtype), mesh)
        calibration = batches(2 * world + 1)
        mine = share(calibration, rank, world)
        for method, amount, kw in CONFIGS:
            kw = dict(kw, dtype=dtype, block_size=16)
            got = prune(model, mine, method, amount, **kw)
            params = dict(model.named_parameters())
            for name, mask in got.masks.items():  # laid out like the weight (K levels stacked in front)
                want_placements = tuple(
                    Shard(p.dim + 1) if isinstance(amount, list) and p.is_shard() else p
                    for p in params[name].placements
                )
                assert isinstance(mask, DTensor) and tuple(mask.placements) == want_placements, name
            want = prune(plain, calibration, method, amount, group=solo, **kw)
            _compare(f"fsdp_{method}{'_owl' if kw.get('owl') else ''}:{str(dtype)[6:]}", got, want, worst, done)
        for name, p in model.named_parameters():  # the model is unchanged
            assert torch.equal(full(p), dense[name]), name
        done["fsdp_unchanged"] += 1
    raises(done, "fsdp_device_refused", ValueError, lambda: prune(model, mine, "wanda", 0.5, device="cpu"), "device=")
    gpt2 = make_gpt2()
    from torch.distributed.fsdp import fully_shard

    for block in gpt2.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(gpt2, mesh=mesh)
    raises(
        done, "fsdp_conv1d_refused", ValueError, lambda: prune(gpt2, mine, "wanda", 0.5), "transformer.h.0", "Shard(0)"
    )
    return {"checks": dict(done), "worst": worst}
