"""Drop-and-grow (SET, RigL): exact sparsity, the right entries move, vmap/meta, errors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import funcprune as fp
from funcprune.dst import drop_and_grow, rigl_update, set_update, zero_grown
from funcprune.saliency import gradient
from funcprune.schedules import cosine_decay


def reference(weights, mask, fraction, grow):
    """Sort-based reference: drop the k smallest alive |w|, grow the k best-scoring off entries."""
    w, m, g = weights.reshape(-1), mask.reshape(-1).clone(), grow.reshape(-1)
    alive = [i for i in range(w.numel()) if m[i]]
    k = round(fraction * len(alive))
    for i in sorted(alive, key=lambda i: (float(w[i].abs()), i))[:k]:
        m[i] = False
    off = [i for i in range(w.numel()) if not m[i]]
    for i in sorted(off, key=lambda i: (-float(g[i]), i))[:k]:
        m[i] = True
    return m.view(weights.shape)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), fraction=st.floats(0, 1), density=st.floats(0, 1))
def test_drop_and_grow_matches_reference_and_keeps_count(seed, fraction, density):
    g = torch.Generator().manual_seed(seed)
    w, grow = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    mask = torch.rand(6, 7, generator=g) < density
    new = drop_and_grow(w, mask, fraction, grow)
    assert int(new.sum()) == int(mask.sum())
    assert torch.equal(new, reference(w, mask, fraction, grow))


def test_drop_and_grow_keeps_the_survivor_count_whatever_the_values():
    # NaN/inf survivors never tie with the filler, so the drop never hits a dead entry
    inf, nan = float("inf"), float("nan")
    w = torch.tensor([nan, inf, 1.0, 2.0])
    mask = torch.tensor([True, True, False, False])
    new = drop_and_grow(w, mask, 0.5, torch.tensor([0.0, 0.0, 5.0, 1.0]))
    assert new.tolist() == [True, False, True, False]  # inf (smaller than NaN, as topk ranks) goes
    # grow scores of -inf among the candidates, NaN among the survivors
    new = drop_and_grow(
        torch.tensor([3.0, 0.5, 0.0, 0.0]),
        torch.tensor([True, True, False, False]),
        0.5,
        torch.tensor([nan, 0.0, -inf, -inf]),
    )
    assert new.tolist() == [True, True, False, False]  # the dropped 0.5 scores 0 > -inf: it comes back
    g = torch.Generator().manual_seed(0)
    specials = torch.tensor([nan, inf, -inf, 0.0, -0.0])
    for _ in range(20):
        w = specials[torch.randint(0, 5, (40, 50), generator=g)] * torch.rand(40, 50, generator=g)
        grow = specials[torch.randint(0, 5, (40, 50), generator=g)]
        mask = torch.rand(40, 50, generator=g) > 0.5
        for fraction in (0.1, 0.5, 1.0):
            assert int(drop_and_grow(w, mask, fraction, grow).sum()) == int(mask.sum())
    batched = torch.vmap(drop_and_grow, in_dims=(None, 0, None, None))(w, torch.stack([mask, ~mask]), 0.3, grow)
    assert batched.sum((1, 2)).tolist() == [int(mask.sum()), int((~mask).sum())]


def test_drop_and_grow_vmap_meta_device_purity(device):
    w, grow = torch.randn(4, 5, 6, device=device), torch.randn(4, 5, 6, device=device)
    mask = torch.rand(4, 5, 6, device=device) > 0.5
    fractions = torch.tensor([0.0, 0.1, 0.5, 1.0], device=device)
    w0, mask0 = w.clone(), mask.clone()
    batched = torch.vmap(drop_and_grow)(w, mask, fractions, grow)
    assert torch.equal(
        batched, torch.stack([drop_and_grow(w[i], mask[i], float(fractions[i]), grow[i]) for i in range(4)])
    )
    assert torch.equal(w, w0) and torch.equal(mask, mask0) and batched.device == w.device
    meta = drop_and_grow(
        torch.empty(5, 6, device="meta"),
        torch.ones(5, 6, dtype=torch.bool, device="meta"),
        0.3,
        torch.empty(5, 6, device="meta"),
    )
    assert meta.device.type == "meta" and meta.dtype == torch.bool


def test_set_and_rigl_training_keep_sparsity_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))
    params = {k: v.detach() for k, v in model.named_parameters()}
    masks = fp.global_unstructured(params, 0.8, include=lambda n, p: n.endswith("weight"))
    counts = {n: int(m.sum()) for n, m in masks.items()}
    x, y = torch.randn(32, 10), torch.randint(0, 4, (32,))

    def loss_fn(p, b):
        return F.cross_entropy(torch.func.functional_call(model, p, (b[0],)), b[1])

    schedule = cosine_decay(0.3, 100)
    changed = 0
    for step in range(0, 100, 20):
        grads = gradient(loss_fn, params, (x, y), masks=masks)
        new = rigl_update(params, masks, grads, schedule, step=step)
        changed += sum(int((new[n] != masks[n]).sum()) for n in masks)
        grown = {n: new[n] & ~masks[n] for n in masks}
        for n in masks:  # every grown entry beats every off entry that was not grown
            off_not_grown = ~new[n] & ~masks[n]
            if grown[n].any() and off_not_grown.any():
                assert grads[n].abs()[grown[n]].min() >= grads[n].abs()[off_not_grown].max()
        params = zero_grown(params, masks, new)
        assert all(float(params[n][grown[n]].abs().sum()) == 0 for n in masks)
        masks = set_update(params, new, schedule, step=step + 10, generator=torch.Generator().manual_seed(step))
        assert {n: int(m.sum()) for n, m in masks.items()} == counts
    assert changed > 0


def test_set_update_is_seeded_and_respects_include():
    params = {"a": torch.randn(20), "b": torch.randn(20)}
    masks = {"a": params["a"].abs() > 0.5, "b": params["b"].abs() > 0.5}
    one = set_update(params, masks, 0.5, generator=torch.Generator().manual_seed(3))
    two = set_update(params, masks, 0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(one[n], two[n]) for n in masks)
    only_a = set_update(params, masks, 0.5, include=["a"], generator=torch.Generator().manual_seed(3))
    assert torch.equal(only_a["b"], masks["b"]) and torch.equal(only_a["a"], one["a"])


def test_errors():
    w, mask = torch.randn(4), torch.tensor([True, True, False, False])
    with pytest.raises(TypeError, match="drop_fraction"):
        drop_and_grow(w, mask, 1, w)
    with pytest.raises(ValueError):
        drop_and_grow(w, mask, 1.5, w)
    with pytest.raises(ValueError, match="grow_scores"):
        drop_and_grow(w, mask, 0.5, torch.randn(5))
    with pytest.raises(ValueError, match="step"):
        set_update({"w": w}, {"w": mask}, cosine_decay(0.3, 10))
    with pytest.raises(KeyError, match="no mask"):
        set_update({"w": w, "v": w}, {"w": mask}, 0.3, include=["v"])
    with pytest.raises(KeyError):
        rigl_update({"w": w}, {"w": mask}, {}, 0.3)
