"""Rank workers for tests/test_distributed_core.py (run by tests/_dist.py's run_ranks).

Every rank builds the same full tensors from one seed, shards them WITHOUT collectives (each takes
its own slice, ``DTensor.from_local``), prunes the DTensors, and compares ``full_tensor()`` of the
masks with the single-process funcprune result on the full tensors, bit for bit. Many checks per
launch: each worker returns ``{check name: number of comparisons}`` and raises on the first mismatch.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

import funcprune as fp
from funcprune import distributions, patterns
from funcprune.stacking import masks_for_amounts, masks_for_scores, masks_for_seeds


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


class Checker:
    def __init__(self):
        self.done = Counter()

    def same(self, what: str, got, want, like=None) -> None:
        if isinstance(got, dict):
            assert list(got) == list(want), f"{what}: names {list(got)} != {list(want)}"
            for name in want:
                self.same(f"{what}[{name}]", got[name], want[name], None if like is None else like.get(name))
            return
        if like is not None:
            assert isinstance(got, DTensor), f"{what}: not a DTensor mask"
            assert got.dtype == torch.bool and got.to_local().dtype == torch.bool, f"{what}: not bool"
            assert tuple(got.placements) == tuple(like.placements), f"{what}: {got.placements} != {like.placements}"
            assert got.device_mesh == like.device_mesh and got.shape == like.shape, what
        g = full(got)
        assert g.shape == want.shape and g.dtype == want.dtype, (
            f"{what}: {g.shape}/{g.dtype} vs {want.shape}/{want.dtype}"
        )
        assert torch.equal(g, want), f"{what}: differs at {(g != want).nonzero()[:5].tolist()}"
        self.done[what.split("[")[0].split(":")[0]] += 1

    def raises(self, what: str, exc, fn, *words) -> None:
        try:
            fn()
        except exc as err:
            for word in words:
                assert word in str(err), f"{what}: {word!r} not in {err}"
            self.done[what] += 1
            return
        raise AssertionError(f"{what}: no {exc.__name__}")


def _trees(mesh, layouts, seed, kind="randn"):
    """Full tensors and their DTensors: ``layouts`` maps name -> (shape, placements)."""
    g = torch.Generator().manual_seed(seed)
    fulls = {}
    for name, (shape, _) in layouts.items():
        if kind == "randn":
            fulls[name] = torch.randn(shape, generator=g)
        elif kind == "dups":  # lots of duplicates: ties at the cut
            fulls[name] = torch.randint(-2, 3, shape, generator=g).float()
        else:
            fulls[name] = torch.ones(shape)
    dts = {name: shard(fulls[name], mesh, placements) for name, (_, placements) in layouts.items()}
    return fulls, dts


def _prior(fulls, seed):
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(t.shape, generator=g) > 0.3 for name, t in fulls.items()}


def _as_dt(tree, like):
    return {name: shard(t, like[name].device_mesh, like[name].placements) for name, t in tree.items()}


def unstructured_checks(c: Checker, mesh, layouts, seeds=(0, 1)) -> None:
    """Global and per-tensor L1 and random, prior masks, scores, ties, NaN/inf, on one mesh."""
    for seed in seeds:
        for kind in ("randn", "dups", "ones"):
            fulls, dts = _trees(mesh, layouts, seed, kind)
            if kind == "randn" and seed == seeds[0]:  # NaN, +-inf among the scores
                first = next(iter(fulls))
                flat = fulls[first].view(-1)
                flat[: min(3, flat.numel())] = torch.tensor([math.nan, math.inf, -math.inf])[: min(3, flat.numel())]
                dts[first] = shard(fulls[first], dts[first].device_mesh, dts[first].placements)
            prior = _prior(fulls, seed + 10)
            first = next(iter(fulls))
            # a shard fully pruned: the first leaf's leading half
            prior[first][: fulls[first].shape[0] // 2 + 1] = False
            dprior = _as_dt(prior, dts)
            for amount in (0.0, 0.3, 0.9, 1.0, 7) if kind == "randn" else (0.3, 0.9):
                for masks, dmasks in ((None, None), (prior, dprior)):
                    want = fp.global_unstructured(fulls, amount, masks=masks)
                    c.same(f"global_l1:{kind}", fp.global_unstructured(dts, amount, masks=dmasks), want, dts)
            # importance scores with other placements than the params
            scores = {
                name: torch.randn(t.shape, generator=torch.Generator().manual_seed(seed + 20)).abs().round()
                for name, t in fulls.items()
            }
            dscores = {name: shard(s, mesh, [Replicate()] * mesh.ndim) for name, s in scores.items()}
            want = fp.global_unstructured(fulls, 0.4, scores=scores, masks=prior)
            c.same("global_l1_scores", fp.global_unstructured(dts, 0.4, scores=dscores, masks=dprior), want, dts)
            # per tensor: lowest-index ties = one-leaf global selection; = l1_unstructured on random floats
            for masks, dmasks in ((None, None), (prior, dprior)):
                got = fp.prune(dts, fp.l1_unstructured, 0.45, masks=dmasks)
                want = {
                    name: fp.global_unstructured({name: t}, 0.45, masks=None if masks is None else {name: masks[name]})[
                        name
                    ]
                    for name, t in fulls.items()
                }
                c.same("l1_per_tensor", got, want, dts)
                if kind == "randn":
                    c.same("l1_per_tensor_as_l1", got, fp.prune(fulls, fp.l1_unstructured, 0.45, masks=masks), dts)
            # random: the hash stream, one process = any world size
            for masks, dmasks in ((None, None), (prior, dprior)):
                gen = lambda: torch.Generator().manual_seed(seed + 5)  # noqa: E731
                want = fp.global_unstructured(fulls, 0.5, method="random", masks=masks, generator=gen(), stream="hash")
                got = fp.global_unstructured(dts, 0.5, method="random", masks=dmasks, generator=gen())
                c.same("global_random", got, want, dts)
                want = fp.prune(fulls, fp.random_unstructured, 0.3, masks=masks, generator=gen(), stream="hash")
                c.same(
                    "random_unstructured",
                    fp.prune(dts, fp.random_unstructured, 0.3, masks=dmasks, generator=gen()),
                    want,
                    dts,
                )
                torch.manual_seed(seed)
                want = fp.prune(fulls, fp.random_unstructured, 2, masks=masks, stream="hash")
                torch.manual_seed(seed)
                c.same("random_global_rng", fp.prune(dts, fp.random_unstructured, 2, masks=dmasks), want, dts)


def structured_checks(c: Checker, mesh, layouts, seed=0) -> None:
    """ln_structured (n = 1, 2, inf; dims 0 and 1), random_structured, prune_channels with biases."""
    for kind in ("randn", "dups"):
        fulls, dts = _trees(mesh, layouts, seed, kind)
        prior = _prior(fulls, seed + 3)
        dprior = _as_dt(prior, dts)
        for n in (1, math.inf) if kind == "randn" else (2,):
            for dim in (0, 1):
                for masks, dmasks in ((None, None), (prior, dprior)):
                    want = fp.prune(fulls, fp.ln_structured, 0.5, n, dim, masks=masks)
                    c.same(
                        f"ln_structured:{kind}", fp.prune(dts, fp.ln_structured, 0.5, n, dim, masks=dmasks), want, dts
                    )
        for dim in (0, 1):
            for masks, dmasks in ((None, None), (prior, dprior)):
                gen = lambda: torch.Generator().manual_seed(seed + 7)  # noqa: E731
                want = fp.prune(fulls, fp.random_structured, 0.5, dim, masks=masks, generator=gen(), stream="hash")
                c.same(
                    "random_structured",
                    fp.prune(dts, fp.random_structured, 0.5, dim, masks=dmasks, generator=gen()),
                    want,
                    dts,
                )


def true_tie_checks(c: Checker, mesh) -> None:
    """Columns 0 and 2 hold the same values in another order (a true tie of their norms) that
    torch's float32 summation may split by block shape: the DTensor mask is the one-process float64
    path's (_sharded_channels.channel_norms on the plain tensor) for every placement, and the tie stays a tie."""
    from funcprune import _sharded_channels

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 3, generator=g)
    w[:, 2] = w[torch.randperm(4096, generator=g), 0]
    w[:, 1] *= 10
    for n in (1, 2, math.inf):
        norms = _sharded_channels.channel_norms(w, n, 1)
        assert norms[0] == norms[2], (n, norms)
        want = fp.select.prune_units(w, fp.select.slices(w.shape, 1), 1, norms, select_kept=True, lazy=False)
        for placements in (
            [Shard(0)] * mesh.ndim,
            [Shard(1)] * mesh.ndim,
            [Replicate()] * (mesh.ndim - 1) + [Shard(0)],
        ):
            dw = shard(w, mesh, placements)
            assert torch.equal(_sharded_channels.channel_norms(dw, n, 1), norms), (n, placements)
            c.same("true_tie", fp.ln_structured(dw, 1, n, 1), want, dw)


def tree_checks(c: Checker, mesh, layouts) -> None:
    """identity, custom_from_mask, apply_masks, mask_grads, sparsity, distributions, masks_for_*, errors."""
    fulls, dts = _trees(mesh, layouts, 4)
    prior = _prior(fulls, 5)
    dprior = _as_dt(prior, dts)
    c.same("identity", fp.prune(dts, fp.identity, masks=dprior), fp.prune(fulls, fp.identity, masks=prior), dts)
    c.same("identity_fresh", fp.prune(dts, fp.identity), fp.prune(fulls, fp.identity), dts)
    custom = _prior(fulls, 6)
    for name in fulls:
        want = fp.custom_from_mask(fulls[name], custom[name], mask=prior[name])
        got = fp.custom_from_mask(dts[name], shard(custom[name], mesh, [Replicate()] * mesh.ndim), mask=dprior[name])
        c.same("custom_from_mask", got, want, dts[name])
    for name, value in fp.apply_masks(dts, dprior).items():
        assert isinstance(value, DTensor) and value.placements == dts[name].placements
        assert torch.equal(full(value), fp.apply_masks(fulls, prior)[name]), name
        c.done["apply_masks"] += 1
    leaves = {name: d.detach().requires_grad_() for name, d in dts.items()}  # autograd through the shards
    sum(v.to_local().sum() for v in fp.apply_masks(leaves, dprior).values()).backward()
    for name, leaf in leaves.items():
        assert torch.equal(leaf.grad.to_local(), dprior[name].to_local().float()), name
        c.done["apply_masks_grad"] += 1
    grads = {name: d * 2 for name, d in dts.items()}
    for name, value in fp.mask_grads(grads, dprior).items():
        assert torch.equal(full(value), fp.mask_grads({k: v * 2 for k, v in fulls.items()}, prior)[name]), name
        c.done["mask_grads"] += 1
    for params, dparams in ((None, None), (fulls, dts)):
        want, got = fp.sparsity(prior, params), fp.sparsity(dprior, dparams)
        assert torch.equal(got.pruned, want.pruned) and got.total == want.total, (got, want)
        assert all(torch.equal(got.per_leaf[k], want.per_leaf[k]) for k in want.per_leaf)
        c.done["sparsity"] += 1
    # distributions: shapes are global; prune_by dispatches per leaf
    for dist_fn in (distributions.uniform, distributions.erk):
        amounts = dist_fn(dts, 0.5, include=lambda name, leaf: True)
        assert amounts == dist_fn(fulls, 0.5, include=lambda name, leaf: True)
        assert distributions.to_counts(dts, amounts) == distributions.to_counts(fulls, amounts)
        for target in (False, True):
            want = distributions.prune_by(fulls, fp.l1_unstructured, amounts, masks=prior, target=target)
            got = distributions.prune_by(dts, fp.l1_unstructured, amounts, masks=dprior, target=target)
            c.same("prune_by", got, want, dts)
    # stacks: an eager loop for DTensors, placements shifted by one dim
    names = list(fulls)
    got = masks_for_amounts(dts, fp.global_unstructured, [0.25, 0.5])
    for k, amount in enumerate([0.25, 0.5]):
        ref = fp.global_unstructured(fulls, amount)
        for name in names:
            assert got[name].placements == tuple(
                Shard(p.dim + 1) if isinstance(p, Shard) else p for p in dts[name].placements
            )
            assert torch.equal(full(got[name])[k], ref[name]), (name, k)
            c.done["masks_for_amounts"] += 1
    s = fp.sparsity(got, dts)
    assert s.pruned.shape == (2,) and torch.equal(
        s.pruned, fp.sparsity({n: full(m) for n, m in got.items()}, fulls).pruned
    )
    torch.manual_seed(3)
    got = masks_for_seeds(dts, fp.random_unstructured, 2, 0.5)
    torch.manual_seed(3)
    for k in range(2):
        ref = fp.prune(fulls, fp.random_unstructured, 0.5, stream="hash")
        for name in names:
            assert torch.equal(full(got[name])[k], ref[name]), (name, k)
            c.done["masks_for_seeds"] += 1
    stacked_scores = {name: torch.stack([t, -t.flip(0)]) for name, t in fulls.items()}
    dstacked = {name: shard(s, mesh, [Replicate()] * mesh.ndim) for name, s in stacked_scores.items()}
    got = masks_for_scores(dts, fp.global_unstructured, dstacked, 0.5)
    for k in range(2):
        ref = fp.global_unstructured(fulls, 0.5, scores={n: s[k] for n, s in stacked_scores.items()})
        for name in names:
            assert torch.equal(full(got[name])[k], ref[name]), (name, k)
            c.done["masks_for_scores"] += 1
    # errors, before anything changes
    name0 = names[0]
    mixed = {**dts, "plain": torch.ones(3)}
    c.raises("mixed_tree", ValueError, lambda: fp.global_unstructured(mixed, 0.5), name0, "plain")
    c.raises(
        "plain_mask",
        ValueError,
        lambda: fp.prune(dts, fp.l1_unstructured, 0.5, masks={name0: prior[name0]}),
        name0,
        "plain tensor",
    )
    custom_method_checks(c, mesh)
    c.raises(
        "torch_stream", ValueError, lambda: fp.global_unstructured(dts, 0.5, method="random", stream="torch"), "hash"
    )
    partial = DTensor.from_local(fulls[name0], mesh, [Partial()] * mesh.ndim, run_check=False)
    c.raises("partial", ValueError, lambda: fp.global_unstructured({"p": partial}, 0.5), "p", "pending sum")
    # every DTensor entry point refuses Partial / _StridedShard leaves (naming them) before anything changes
    from torch.distributed.tensor.placement_types import _StridedShard

    bad = {
        "pend": partial,
        "strided": DTensor.from_local(
            fulls[name0], mesh, [_StridedShard(0, split_factor=2)] * mesh.ndim, run_check=False
        ),
    }
    for leaf, why in (("pend", "pending sum"), ("strided", "not supported")):
        tree = {**dts, leaf: bad[leaf]}
        calls = {
            "prune_l1": lambda: fp.prune(tree, fp.l1_unstructured, 0.5),
            "prune_ln": lambda: fp.prune(tree, fp.ln_structured, 0.5, 2, 0),
            "prune_random": lambda: fp.prune(tree, fp.random_unstructured, 0.5),
            "prune_channels": lambda: patterns.prune_channels(tree, 0.5, include=[leaf]),
            "sparsity": lambda: fp.sparsity({leaf: bad[leaf]}),
            "sparsity_params": lambda: fp.sparsity(dprior, tree),
            "apply_masks": lambda: fp.apply_masks(tree, {leaf: bad[leaf]}),
            "mask_grads": lambda: fp.mask_grads(tree, {leaf: bad[leaf]}),
            "prune_by": lambda: distributions.prune_by(tree, fp.l1_unstructured, {name0: 0.5}),
            "ln_direct": lambda: fp.ln_structured(bad[leaf], 0.5, 2, 0),
            "l1_direct": lambda: fp.l1_unstructured(bad[leaf], 0.5),
        }
        for what, call in calls.items():
            c.raises("placements_refused", ValueError, call, why, *(() if what.endswith("direct") else (leaf,)))
    # a mask/scores sharded unlike its param is refused (no shard travels); Replicate() is sliced locally
    moved = {
        name: shard(
            prior[name], mesh, [Shard(1 - p.dim) if isinstance(p, Shard) else Shard(0) for p in dts[name].placements]
        )
        for name in dts
    }
    name_s = next(n for n in dts if isinstance(dts[n].placements[-1], Shard))
    c.raises(
        "mask_sharded_unlike",
        ValueError,
        lambda: fp.global_unstructured(dts, 0.5, masks={name_s: moved[name_s]}),
        name_s,
        "lay the mask out",
    )
    c.raises(
        "mask_sharded_unlike",
        ValueError,
        lambda: fp.prune(dts, fp.l1_unstructured, 0.5, scores={name_s: moved[name_s].float()}),
        name_s,
        "scores",
    )
    repl = {name: shard(prior[name], mesh, [Replicate()] * mesh.ndim) for name in dts}
    c.same(
        "mask_replicated",
        fp.global_unstructured(dts, 0.5, masks=repl),
        fp.global_unstructured(fulls, 0.5, masks=prior),
        dts,
    )


def row_magnitude(scores, amount, *, mask=None):
    """A user's method, as docs/select.md writes it: scores plus a granularity, no distributed code."""
    return fp.select.prune_units(
        scores, fp.select.rows(scores.shape, 0), amount, lambda: scores.detach().abs(), mask=mask
    )


def magnitude(scores, amount, *, mask=None):
    """A user's unstructured method (scores without ties: the sharded cut and topk agree)."""
    return fp.select.prune_units(
        scores, fp.select.entries(scores.shape), amount, lambda: scores.detach().abs(), mask=mask
    )


def custom_method_checks(c: Checker, mesh) -> None:
    """A method written with no distributed code runs on Shard(0) DTensors and equals one process bit
    for bit (per-row, unstructured, N:M through prune); pools split across ranks are refused, naming the leaf."""
    g = torch.Generator().manual_seed(11)
    fulls = {
        "w": torch.randn(8, 12, generator=g),
        "v": torch.randn(4, 16, generator=g),
        "u": torch.randn(3, 8, generator=g),
    }  # 3 rows over a 2x2 mesh: an empty shard
    prior = {name: torch.rand(t.shape, generator=g) > 0.3 for name, t in fulls.items()}
    dts = {name: shard(t, mesh, [Shard(0)] * mesh.ndim) for name, t in fulls.items()}
    dprior = {name: shard(m, mesh, [Shard(0)] * mesh.ndim) for name, m in prior.items()}
    for method, amount in ((row_magnitude, 0.5), (row_magnitude, 2), (magnitude, 0.3)):
        c.same("custom_method", fp.prune(dts, method, amount), fp.prune(fulls, method, amount), dts)
        c.same(
            "custom_method",
            fp.prune(dts, method, amount, masks=dprior),
            fp.prune(fulls, method, amount, masks=prior),
            dts,
        )
    c.same(
        "custom_method",
        fp.prune(dts, patterns.nm_structured, 2, 4, masks=dprior),
        fp.prune(fulls, patterns.nm_structured, 2, 4, masks=prior),
        dts,
    )
    split = {"r": shard(fulls["w"], mesh, [Shard(1)] * mesh.ndim)}
    c.raises("pools_split_refused", ValueError, lambda: fp.prune(split, row_magnitude, 0.5), "r", "split across ranks")


def dtype_checks(c: Checker, mesh, layouts) -> None:
    """bfloat16/float16 leaves (one radix pass; norms cross as float64 and come back exact) and
    chunks smaller than a shard (ties resolved across chunk boundaries)."""
    fulls, _ = _trees(mesh, layouts, 9, "dups")
    for i, name in enumerate(fulls):
        fulls[name] = (fulls[name] * 0.37).to(torch.bfloat16 if i % 2 else torch.float16)
    dts = {name: shard(t, mesh, layouts[name][1]) for name, t in fulls.items()}
    prior = _prior(fulls, 2)
    dprior = _as_dt(prior, dts)
    for chunk in (3, 1 << 20):
        want = fp.global_unstructured(fulls, 0.6, masks=prior, chunk_size=chunk)
        c.same("dtypes_global", fp.global_unstructured(dts, 0.6, masks=dprior, chunk_size=chunk), want, dts)
    for name in fulls:
        ones = {name: fp.global_unstructured({name: fulls[name]}, 0.5)[name]}
        c.same("dtypes_l1", {name: fp.l1_unstructured(dts[name], 0.5)}, ones, {name: dts[name]})
        if fulls[name].dim() > 1:
            want = fp.ln_structured(fulls[name], 0.5, 2, 1, mask=prior[name])
            c.same("dtypes_ln", fp.ln_structured(dts[name], 0.5, 2, 1, mask=dprior[name]), want, dts[name])


def channels_checks(c: Checker, mesh) -> None:
    """patterns.prune_channels on a sharded Linear/Conv-like tree, biases sharded too."""
    layouts = {
        "fc.weight": ((6, 5), [Shard(1)] * mesh.ndim),
        "fc.bias": ((6,), [Shard(0)] * mesh.ndim),
        "conv.weight": ((5, 3, 2, 2), [Shard(0)] * mesh.ndim),
        "conv.bias": ((5,), [Replicate()] * mesh.ndim),
    }
    for kind in ("randn", "dups"):
        fulls, dts = _trees(mesh, layouts, 8, kind)
        for n in (1, 2):
            want = patterns.prune_channels(fulls, 0.4, n)
            c.same(f"prune_channels:{kind}", patterns.prune_channels(dts, 0.4, n), want, dts)


@contextlib.contextmanager
def watched(allow=()):
    """Inside: any gather or all-to-all (but those in ``allow``), full_tensor or redistribute raises;
    all_reduce payload bytes counted."""
    import torch.distributed._functional_collectives as funcol

    sent = {"bytes": 0, "calls": 0}
    saved = []

    def forbid(owner, attr):
        original = getattr(owner, attr)

        def refuse(*args, **kwargs):
            raise AssertionError(f"{attr} called inside a gather-free selection")

        saved.append((owner, attr, original))
        setattr(owner, attr, refuse)

    for attr in (
        "all_gather",
        "all_gather_into_tensor",
        "all_gather_object",
        "all_to_all",
        "all_to_all_single",
        "gather",
        "broadcast",
        "reduce_scatter_tensor",
        "scatter",
    ):
        if attr not in allow:
            forbid(dist, attr)
    for attr in ("all_gather_tensor", "all_to_all_single", "reduce_scatter_tensor", "broadcast"):
        forbid(funcol, attr)
    forbid(DTensor, "full_tensor")
    forbid(DTensor, "redistribute")
    original_reduce = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        sent["bytes"] += tensor.numel() * tensor.element_size()
        sent["calls"] += 1
        return original_reduce(tensor, *args, **kwargs)

    saved.append((dist, "all_reduce", original_reduce))
    dist.all_reduce = counting
    try:
        yield sent
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def gather_free_checks(c: Checker, mesh) -> dict:
    """Global/per-tensor L1, random, ln_structured on whole channels, sparsity: no gather, and the
    bytes all_reduce sends do not grow with the model (8x the entries here)."""
    out = {}
    for scale in (1, 8):
        layouts = {
            "a": ((64 * scale, 33), [Shard(0)] * mesh.ndim),
            "b": ((40, 16 * scale), [Shard(1)] * mesh.ndim),
            "c": ((scale * 10,), [Replicate()] * mesh.ndim),
        }
        fulls, dts = _trees(mesh, layouts, scale)
        calls = {
            "global_l1": lambda p, **kw: fp.global_unstructured(p, 0.7, **kw),
            "per_tensor_l1": lambda p, **kw: fp.prune(p, fp.l1_unstructured, 0.2),
            "global_random": lambda p, **kw: fp.global_unstructured(
                p, 0.5, method="random", generator=torch.Generator().manual_seed(1), **kw
            ),
            "ln_structured": lambda p, **kw: {
                "a": fp.ln_structured(p["a"], 0.5, 2, 0),
                "b": fp.ln_structured(p["b"], 0.5, 1, 1),
            },
        }
        for what, call in calls.items():
            want = call(fulls, stream="hash") if what == "global_random" else call(fulls)
            with watched() as sent:
                got = call(dts)
            out[f"{what}_bytes_x{scale}"] = sent["bytes"]
            c.same("gather_free", got, want, dts)
        with watched():
            fp.sparsity(got, dts)
        # norms along dim 0 of a tensor split along dim 1: per-shard partial sums, one float64 a channel
        want = fp.ln_structured(fulls["b"], 0.5, 2, 0)
        with watched() as sent:
            got = fp.ln_structured(dts["b"], 0.5, 2, 0)
        assert sent["bytes"] == 8 * 40, sent
        c.same("gather_free", got, want, dts["b"])
    for what in ("global_l1", "per_tensor_l1", "global_random"):
        assert out[f"{what}_bytes_x1"] == out[f"{what}_bytes_x8"], out
    for scale in (1, 8):  # structured: one float64 norm per channel, nothing else
        assert out[f"ln_structured_bytes_x{scale}"] == 8 * (64 + 16) * scale, out
    # float32 keys: 2 radix passes of 65537 int64 counts, then one vector: each rank's alive count and
    # the call's fingerprint checked equal (6 parts as hash and negated hash, the amount's bits twice);
    # no straddling tie here
    assert out["global_l1_bytes_x1"] == 2 * 65537 * 8 + 8 * (mesh.size() + 2 * 6 + 2), out
    return out


def world_1d(rank: int, world: int, seeds=(0, 1), everything: bool = True) -> dict:
    """The checks on a 1-D mesh of ``world`` ranks (the tree-level ones only if ``everything``)."""
    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (world,))
    c = Checker()
    layouts = {
        "a": ((7, 5), [Shard(0)]),  # uneven
        "b": ((4, 9), [Shard(1)]),
        "c": ((3, 4), [Replicate()]),
        "d": ((3, 2), [Shard(0)]),
    }  # 3 rows over 4 ranks: an empty shard
    unstructured_checks(c, mesh, layouts, seeds)
    structured_checks(c, mesh, layouts)
    true_tie_checks(c, mesh)
    if everything:
        tree_checks(c, mesh, layouts)
        dtype_checks(c, mesh, layouts)
        channels_checks(c, mesh)
    bytes_sent = gather_free_checks(c, mesh)
    return {"checks": dict(c.done), "bytes": bytes_sent}


def world_2d(rank: int, world: int) -> dict:
    """The checks on a (2, 2) HSDP mesh: Replicate across the first dim, Shard across the second."""
    torch.manual_seed(0)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    c = Checker()
    layouts = {
        "a": ((7, 5), [Replicate(), Shard(0)]),
        "b": ((4, 9), [Replicate(), Shard(1)]),
        "c": ((5, 3), [Shard(0), Shard(1)]),
        "d": ((3, 4), [Shard(0), Shard(0)]),
    }  # 3 rows over 4 blocks: an empty shard
    unstructured_checks(c, mesh, layouts, seeds=(0,))
    structured_checks(c, mesh, layouts)
    true_tie_checks(c, mesh)
    tree_checks(c, mesh, layouts)
    dtype_checks(c, mesh, layouts)
    return {"checks": dict(c.done)}
