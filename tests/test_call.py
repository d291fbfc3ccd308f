"""functional_call: masked forward, gradients as torch's weight_orig.grad, vmap over masks and params."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune

import funcprune as fp


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x, scale=1.0):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1)) * scale


def setup(seed=0):
    torch.manual_seed(seed)
    net = Net().eval()
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["conv.weight", "fc.weight"])
    x = torch.randn(5, 1, 8, 8)
    return net, params, masks, x


def test_forward_and_grads_match_a_torch_pruned_module():
    net, params, masks, x = setup()
    ref = copy.deepcopy(net)
    torch_prune.custom_from_mask(ref.conv, "weight", masks["conv.weight"])
    torch_prune.custom_from_mask(ref.fc, "weight", masks["fc.weight"])
    ref(x).square().sum().backward()

    def loss(p):
        return fp.functional_call(net, p, (x,), masks=masks).square().sum()

    grads = torch.func.grad(loss)(params)
    assert torch.equal(fp.functional_call(net, params, (x,), masks=masks), ref(x))
    assert torch.equal(grads["conv.weight"], ref.conv.weight_orig.grad)
    assert torch.equal(grads["fc.weight"], ref.fc.weight_orig.grad)
    assert (grads["fc.weight"][~masks["fc.weight"]] == 0).all()
    # plain autograd too
    live = {n: p.clone().requires_grad_() for n, p in params.items()}
    fp.functional_call(net, live, x, masks=masks).square().sum().backward()
    assert torch.allclose(live["fc.weight"].grad, grads["fc.weight"])


def test_float_masks_kwargs_and_module_untouched():
    net, params, masks, x = setup()
    state = copy.deepcopy(net.state_dict())
    float_masks = {n: m.float() for n, m in masks.items()}
    out = fp.functional_call(net, params, (x,), {"scale": 2.0}, masks=float_masks)
    assert torch.allclose(out, 2.0 * fp.functional_call(net, params, (x,), masks=masks))
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    # masks for names missing from params mask the module's own tensor
    only_masks = fp.functional_call(net, {}, (x,), masks=masks)
    assert torch.equal(only_masks, fp.functional_call(net, params, (x,), masks=masks))


def test_vmap_over_stacked_masks_params_and_both():
    net, params, masks, x = setup()
    k = 4
    stacked_masks = {n: torch.stack([fp.l1_unstructured(params[n], a) for a in (0.1, 0.3, 0.6, 0.9)]) for n in masks}
    stacked_params = {n: p + 0.01 * torch.randn(k, *p.shape) for n, p in params.items()}

    def run(p, m):
        return fp.functional_call(net, p, (x,), masks=m)

    by_masks = torch.func.vmap(run, in_dims=(None, 0))(params, stacked_masks)
    by_params = torch.func.vmap(run, in_dims=(0, None))(stacked_params, masks)
    by_both = torch.func.vmap(run)(stacked_params, stacked_masks)
    for i in range(k):
        mi = {n: m[i] for n, m in stacked_masks.items()}
        pi = {n: p[i] for n, p in stacked_params.items()}
        assert torch.allclose(by_masks[i], run(params, mi), atol=1e-6)
        assert torch.allclose(by_params[i], run(pi, masks), atol=1e-6)
        assert torch.allclose(by_both[i], run(pi, mi), atol=1e-6)
    grads = torch.func.vmap(torch.func.grad(lambda p, m: run(p, m).sum()), in_dims=(None, 0))(params, stacked_masks)
    assert ((grads["fc.weight"] != 0) <= stacked_masks["fc.weight"]).all()


def test_buffers_given_in_params_are_used():
    net, params, masks, x = setup()
    bufs = {n: b.clone() for n, b in net.named_buffers()}
    bufs["bn.running_mean"] += 1.0
    shifted = fp.functional_call(net, {**params, **bufs}, (x,), masks=masks)
    expected = torch.func.functional_call(net, {**fp.apply_masks(params, masks), **bufs}, (x,))
    assert torch.equal(shifted, expected)
    assert not torch.allclose(shifted, fp.functional_call(net, params, (x,), masks=masks))


def test_jacrev_composes():
    net, params, masks, x = setup()
    jac = torch.func.jacrev(lambda p: fp.functional_call(net, p, (x[:1],), masks=masks))(params)
    assert jac["fc.weight"].shape == (1, 3, 3, 144)
    assert (jac["fc.weight"][..., ~masks["fc.weight"]] == 0).all()


def test_errors_name_the_offending_tensor():
    net, params, masks, x = setup()
    with pytest.raises(KeyError, match="conv9.weight"):
        fp.functional_call(net, params, (x,), masks={"conv9.weight": torch.ones(1, dtype=torch.bool)})
    with pytest.raises(KeyError, match="extra"):
        fp.functional_call(net, {**params, "extra": torch.ones(1)}, (x,), masks=masks)
    with pytest.raises(ValueError, match=r"fc\.weight: mask has shape \(3,\)"):
        fp.functional_call(net, params, (x,), masks={"fc.weight": torch.ones(3, dtype=torch.bool)})


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_tied_tensors_take_one_value_and_one_mask_as_torch_ties_them():
    torch.manual_seed(0)
    net, x = Tied(), torch.randn(3, 4)
    weight = torch.randn(4, 4)
    mask = torch.rand(4, 4) > 0.5
    want = torch.func.functional_call(net, {"a.weight": weight * mask}, (x,))  # ties b.weight too
    assert torch.equal(fp.functional_call(net, {"a.weight": weight}, (x,), masks={"a.weight": mask}), want)
    assert torch.equal(fp.functional_call(net, {"b.weight": weight}, (x,), masks={"a.weight": mask}), want)
    assert torch.equal(
        fp.functional_call(net, {"a.weight": weight, "b.weight": weight}, (x,), masks={"b.weight": mask}), want
    )
    with pytest.raises(ValueError, match=r"params give different values for 'a\.weight' and 'b\.weight'"):
        fp.functional_call(net, {"a.weight": weight, "b.weight": weight + 1}, (x,))
    with pytest.raises(ValueError, match="masks give different values"):
        fp.functional_call(net, {}, (x,), masks={"a.weight": mask, "b.weight": ~mask})
    assert net.b.weight is net.a.weight and isinstance(net.a.weight, nn.Parameter)


def test_torch_func_argument_order_and_keyword_only_masks():
    # torch.func's order (module, params, args, kwargs); masks only by keyword, never read as args.
    torch.manual_seed(0)
    lin, x = nn.Linear(3, 2), torch.randn(4, 3)
    p = dict(lin.named_parameters())
    assert torch.equal(fp.functional_call(lin, p, (x,)), torch.func.functional_call(lin, p, (x,)))
    assert torch.equal(fp.functional_call(lin, p, x), lin(x))
    mask = {"weight": torch.tensor([[True, False, True], [False, True, True]])}
    assert torch.equal(
        fp.functional_call(lin, p, (x,), masks=mask), torch.func.functional_call(lin, fp.apply_masks(p, mask), (x,))
    )
    with pytest.raises(TypeError):
        fp.functional_call(lin, p, (x,), None, mask)  # masks are keyword-only


def test_strict_as_torch_func():
    net, params, masks, x = setup()
    buffers = dict(net.named_buffers())
    out = fp.functional_call(net, {**params, **buffers}, (x,), masks=masks, strict=True)
    assert torch.equal(out, fp.functional_call(net, params, (x,), masks=masks))
    with pytest.raises(RuntimeError, match=r"Missing key\(s\): 'bn.running_mean', 'bn.running_var'"):
        fp.functional_call(net, params, (x,), masks=masks, strict=True)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\): 'fc.bias'"):
        fp.functional_call(net, {n: v for n, v in {**params, **buffers}.items() if n != "fc.bias"}, (x,), strict=True)
    with pytest.raises(RuntimeError):  # torch's own strict check fails the same way
        torch.func.functional_call(net, params, (x,), strict=True)


def test_strict_on_pruned_and_tied_modules():
    torch.manual_seed(0)
    net, x = Tied(), torch.randn(3, 4)
    given = {"a.weight": net.a.weight, "a.bias": net.a.bias, "b.bias": net.b.bias}  # one name of the tie
    assert torch.equal(fp.functional_call(net, given, (x,), strict=True), net(x))
    torch_prune.l1_unstructured(net.a, "bias", 2)
    assert torch.equal(fp.functional_call(net, given, (x,), strict=True), net(x))  # bias by its original name
    with pytest.raises(RuntimeError, match=r"Missing key\(s\): 'a.bias'\."):
        fp.functional_call(net, {"a.weight": net.a.weight, "b.bias": net.b.bias}, (x,), strict=True)


def test_a_learnable_float_mask_of_another_dtype_gets_its_gradient():
    # A float mask of another dtype (float64 on float32 weights) gets its gradient, eager and torch.func alike.
    net, params, masks, x = setup()
    soft = {n: torch.rand(m.shape, dtype=torch.float64) for n, m in masks.items()}

    def loss(p, m):
        return fp.functional_call(net, p, (x,), masks=m).square().sum()

    def reference(p, m):
        return (
            torch.func.functional_call(net, {**p, **{n: p[n] * v.to(p[n].dtype) for n, v in m.items()}}, (x,))
            .square()
            .sum()
        )

    live = {n: p.clone().requires_grad_() for n, p in params.items()}
    live_masks = {n: m.clone().requires_grad_() for n, m in soft.items()}
    loss(live, live_masks).backward()
    want = torch.func.grad(reference, argnums=1)(params, soft)
    got = torch.func.grad(loss, argnums=1)(params, soft)
    for name in soft:
        assert live_masks[name].grad is not None and live_masks[name].grad.dtype == torch.float64
        torch.testing.assert_close(live_masks[name].grad, want[name])
        torch.testing.assert_close(got[name], want[name])


def test_tied_names_with_equal_values_are_accepted():
    # named_parameters(remove_duplicate=False) + detach() gives a tied tensor two names with one value:
    # accepted (with masks from fp.prune too), not refused as "different values".
    torch.manual_seed(0)
    net, x = Tied(), torch.randn(3, 4)
    params = {n: p.detach() for n, p in net.named_parameters(remove_duplicate=False)}
    assert params["a.weight"] is not params["b.weight"]
    masks = fp.prune(params, fp.l1_unstructured, 0.5, include=["a.weight", "b.weight"])
    assert masks["a.weight"] is not masks["b.weight"] and torch.equal(masks["a.weight"], masks["b.weight"])
    want = torch.func.functional_call(net, fp.apply_masks(params, masks), (x,), tie_weights=False)
    assert torch.equal(fp.functional_call(net, params, (x,), masks=masks), want)
    clones = {**params, "b.weight": params["a.weight"].clone()}  # equal values in another storage
    assert torch.equal(fp.functional_call(net, clones, (x,), masks=masks), want)
    # under torch.func every input is wrapped on its own: the same storage is still recognized
    grads = torch.func.grad(lambda p: fp.functional_call(net, p, (x,), masks=masks).sum())(params)
    live = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    fp.functional_call(net, live, (x,), masks={"a.weight": masks["a.weight"]}).sum().backward()
    torch.testing.assert_close(grads["a.weight"] + grads["b.weight"], live["a.weight"].grad)
    stacked = fp.stack([masks, masks])
    out = torch.func.vmap(lambda m: fp.functional_call(net, params, (x,), masks=m))(stacked)
    torch.testing.assert_close(out[1], want)
    with pytest.raises(ValueError, match="masks give different values"):
        fp.functional_call(net, params, (x,), masks={**masks, "b.weight": ~masks["b.weight"]})
    with pytest.raises(ValueError, match="params give different values"):
        fp.functional_call(net, {**params, "b.weight": params["a.weight"][:, [1, 0, 2, 3]]}, (x,))


def test_concurrent_calls_on_one_module_are_safe():
    # Two threads calling one module each get their own outputs, and neither leaves its tensors in
    # the module (a compat-pruned module keeps its weight_mask buffer, not a caller's bool mask).
    import sys
    import threading

    import funcprune.compat as compat

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    compat.l1_unstructured(model[0], "weight", 0.5)
    x = torch.randn(64, 16)
    own = {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]}
    params, masks = fp.from_module(model)
    inputs = []
    for k in range(2):
        p = {n: (v.detach() * (k + 1)).clone() for n, v in params.items()}
        m = fp.prune(p, fp.random_unstructured, 0.3 * (k + 1), include=["0.weight", "2.weight"])
        inputs.append((p, m, fp.functional_call(model, p, (x,), masks=m)))
    errors, interval = [], sys.getswitchinterval()

    def run(k):
        p, m, want = inputs[k]
        for _ in range(50):
            if not torch.equal(fp.functional_call(model, p, (x,), masks=m), want):
                errors.append(k)

    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors
    assert {n: t for n, t in [*model.named_parameters(), *model.named_buffers()]} == own
    assert all(now is own[n] for n, now in [*model.named_parameters(), *model.named_buffers()])
    assert model[0].weight_mask.dtype == torch.float32
    assert torch.equal(model[0].weight, model[0].weight_orig * model[0].weight_mask)


def test_a_nested_call_on_the_same_module_does_not_deadlock():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x, inner=None):
            if inner is not None:  # a forward that runs the module functionally again
                x = fp.functional_call(self, inner, (x,))
            return self.lin(x)

    torch.manual_seed(0)
    net, x = Twice(), torch.randn(2, 3)
    p = {n: v.detach() * 2 for n, v in net.named_parameters()}
    out = fp.functional_call(net, p, (x,), {"inner": dict(net.named_parameters())})
    assert torch.allclose(out, torch.func.functional_call(net, p, (net(x),)))


def test_batchnorm_running_stats_in_train_mode_update_where_they_live():
    # BatchNorm in train mode updates its running stats in the module's own buffers, as documented.
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(8, 3) + 5
    params = dict(bn.named_parameters())
    fp.functional_call(bn, params, (x,))
    assert int(bn.num_batches_tracked) == 1 and bn.running_mean.abs().sum() > 0  # the module's own buffers
    given = {n: b.clone() for n, b in bn.named_buffers()}
    before = copy.deepcopy(bn.state_dict())
    fp.functional_call(bn, {**params, **given}, (x,))
    assert int(given["num_batches_tracked"]) == 2  # the given tensors, not the module's
    assert all(torch.equal(v, bn.state_dict()[k]) for k, v in before.items())
    out, new = fp.call_with_buffers(bn, params, given, (x,))  # pure: neither is updated
    assert int(new["num_batches_tracked"]) == 3 and int(given["num_batches_tracked"]) == 2
    bn.eval()
    fp.functional_call(bn, params, (x,))
    assert all(torch.equal(v, bn.state_dict()[k]) for k, v in before.items())
