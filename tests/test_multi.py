"""Running K subnetworks in one vmap: == a loop of functional_call / of torch-pruned modules."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune

import funcprune as fp

K = 4


class Net(nn.Module):
    """Conv + BatchNorm + Dropout + Linear: every kind of layer the multi-mask path must handle."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = self.drop(F.relu(self.bn(self.conv(x))))
        return self.fc(x.flatten(1))


def setup(device, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = Net(dropout).to(device).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator(device).manual_seed(seed)
    masks = [
        fp.prune(params, fp.random_unstructured, 0.2 * k, include=["conv.weight", "fc.weight"], generator=gen)
        for k in range(K)
    ]
    x = torch.randn(5, 2, 6, 6, device=device)
    y = torch.randint(0, 3, (5,), device=device)
    return model, params, masks, x, y


def loss_fn(model):
    def loss(params, masks, x, y):
        return F.cross_entropy(fp.functional_call(model, params, (x,), masks=masks), y)

    return loss


@pytest.mark.parametrize("stacked", ["masks", "params", "both"])
def test_stacked_call_equals_loop(device, stacked):
    model, params, masks, x, _ = setup(device)
    param_list = [{n: p + 0.1 * k for n, p in params.items()} for k in range(K)]
    use_params = fp.stack(param_list) if stacked != "masks" else params
    use_masks = fp.stack(masks) if stacked != "params" else masks[1]
    out = fp.stacked_call(model, use_params, (x,), masks=use_masks, stacked=stacked)
    for k in range(K):
        p = param_list[k] if stacked != "masks" else params
        m = masks[k] if stacked != "params" else masks[1]
        torch.testing.assert_close(out[k], fp.functional_call(model, p, (x,), masks=m))
    chunked = fp.stacked_call(model, use_params, (x,), masks=use_masks, stacked=stacked, chunk_size=3)
    torch.testing.assert_close(chunked, out)


def test_stacked_call_equals_torch_prune_user_loop(device):
    model, params, masks, x, _ = setup(device)
    out = fp.stacked_call(model, params, (x,), masks=fp.stack(masks))
    pruned = Net().to(device).eval()
    pruned.load_state_dict(model.state_dict())
    torch_prune.identity(pruned.conv, "weight")
    torch_prune.identity(pruned.fc, "weight")
    with torch.no_grad():
        for k, mask in enumerate(masks):
            pruned.conv.weight_mask.copy_(mask["conv.weight"])
            pruned.fc.weight_mask.copy_(mask["fc.weight"])
            torch.testing.assert_close(out[k], pruned(x))


@pytest.mark.parametrize("argnums", [(1,), (0, 1)])
def test_grad_and_value_equal_loop(device, argnums):
    model, params, masks, x, y = setup(device)
    loss = loss_fn(model)
    param_list = [{n: p * (1 + 0.1 * k) for n, p in params.items()} for k in range(K)]
    use_params = fp.stack(param_list) if 0 in argnums else params
    stacked_masks = fp.stack(masks)
    losses = fp.vmap_stacked(loss, argnums)(use_params, stacked_masks, x, y)
    grads = fp.vmap_stacked(torch.func.grad(loss), argnums)(use_params, stacked_masks, x, y)
    grads2, losses2 = fp.vmap_stacked(torch.func.grad_and_value(loss), argnums, chunk_size=3)(
        use_params, stacked_masks, x, y
    )
    torch.testing.assert_close(losses2, losses)
    for k in range(K):
        p = param_list[k] if 0 in argnums else params
        ref_grads, ref_loss = torch.func.grad_and_value(loss)(p, masks[k], x, y)
        torch.testing.assert_close(losses[k], ref_loss)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name][k], g)
            torch.testing.assert_close(grads2[name][k], g)
            if name in masks[k]:
                assert not grads[name][k][~masks[k][name]].any()  # zero at pruned entries


def test_batchnorm_train_stacked_buffers_equal_loop(device):
    model, params, masks, x, y = setup(device)
    model.train()
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    before = {n: b.clone() for n, b in buffers.items()}
    stacked_buffers = fp.stack([buffers] * K)

    def loss(p, b, m, x, y):
        out, new = fp.call_with_buffers(model, p, b, (x,), masks=m)
        return F.cross_entropy(out, y), new

    grads, new = fp.vmap_stacked(torch.func.grad(loss, has_aux=True), (1, 2))(
        params, stacked_buffers, fp.stack(masks), x, y
    )
    for k in range(K):
        ref_grads, ref_new = torch.func.grad(loss, has_aux=True)(params, buffers, masks[k], x, y)
        for name, b in ref_new.items():
            torch.testing.assert_close(new[name][k], b)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name][k], g)
    assert not torch.equal(new["bn.running_mean"][0], new["bn.running_mean"][-1])  # per-subnetwork stats
    assert (new["bn.num_batches_tracked"] == 1).all()
    for name, b in buffers.items():  # pure: inputs unchanged
        assert torch.equal(b, before[name])
    assert int(model.bn.num_batches_tracked) == 0


def test_batchnorm_eval_shared_buffers(device):
    model, params, masks, x, _ = setup(device)
    model.bn.running_mean.uniform_()
    buffers = dict(model.named_buffers())
    run = fp.vmap_stacked(lambda p, b, m: fp.call_with_buffers(model, p, b, (x,), masks=m), 2)
    out, new = run(params, buffers, fp.stack(masks))  # buffers shared (unstacked)
    for k in range(K):
        torch.testing.assert_close(out[k], fp.functional_call(model, params, (x,), masks=masks[k]))
    for name, b in buffers.items():
        assert torch.equal(new[name][0], b)


def test_dropout_randomness_per_subnetwork(device):
    model, params, masks, x, _ = setup(device, dropout=0.5)
    model.train()
    buffers = fp.stack([dict(model.named_buffers())] * K)
    same_masks = fp.stack([masks[0]] * K)

    def run(p, b, m):
        return fp.call_with_buffers(model, p, b, (x,), masks=m)[0]

    different = fp.vmap_stacked(run, (1, 2), randomness="different")(params, buffers, same_masks)
    assert not torch.equal(different[0], different[1])
    same = fp.vmap_stacked(run, (1, 2), randomness="same")(params, buffers, same_masks)
    torch.testing.assert_close(same[0], same[1])
    with pytest.raises(RuntimeError, match="randomness"):
        fp.vmap_stacked(run, (1, 2))(params, buffers, same_masks)


def test_errors():
    model, params, masks, x, _ = setup("cpu")
    with pytest.raises(ValueError, match="stacked must be one of"):
        fp.stacked_call(model, params, (x,), masks=fp.stack(masks), stacked="mask")
    with pytest.raises(ValueError, match=r"argnums \[5\] out of range for 2"):
        fp.vmap_stacked(lambda a, b: a, 5)(x, x)
    with pytest.raises(ValueError, match="at least one"):
        fp.vmap_stacked(lambda a: a, ())
    with pytest.raises(ValueError, match=r"\['bn.running_mean'\] are in both"):
        fp.call_with_buffers(model, {**params, "bn.running_mean": torch.zeros(4)}, dict(model.named_buffers()))


class ConvZoo(nn.Module):
    """Convs in every form the conv batching rule must route: strided, grouped, dilated, 'same'."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2, bias=False)
        self.c = nn.Conv2d(4, 3, 3, padding="same")

    def forward(self, x):
        return self.c(F.relu(self.b(F.relu(self.a(x))))).flatten(1)


@pytest.mark.parametrize("stacked", ["masks", "params", "both"])
def test_conv_rule_equals_torch_rule_and_loop(device, stacked):
    torch.manual_seed(0)
    model = ConvZoo().to(device)
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.randn(3, 2, 9, 9, device=device)
    weights = [n for n in params if n.endswith("weight")]
    masks = fp.masks_for_seeds(params, fp.random_unstructured, K, 0.5, include=weights)
    use_params = (
        fp.stack([{n: p * (1 + k) for n, p in params.items()} for k in range(K)]) if stacked != "masks" else params
    )
    use_masks = masks if stacked != "params" else fp.unstack(masks)[0]
    argnums = {"masks": 1, "params": 0, "both": (0, 1)}[stacked]

    def loss(p, m):
        return fp.functional_call(model, p, (x,), masks=m).square().mean()

    out = {
        conv: fp.stacked_call(model, use_params, (x,), masks=use_masks, stacked=stacked, conv=conv)
        for conv in ("auto", "torch")
    }
    torch.testing.assert_close(out["auto"], out["torch"])
    grads = {
        label: fp.vmap_stacked(torch.func.grad(loss), argnums, conv=conv, chunk_size=chunk)(use_params, use_masks)
        for label, conv, chunk in (("auto", "auto", None), ("torch", "torch", None), ("chunked", "auto", 3))
    }
    for k in range(K):
        p = fp.unstack(use_params)[k] if stacked != "masks" else params
        m = fp.unstack(use_masks)[k] if stacked != "params" else use_masks
        torch.testing.assert_close(out["auto"][k], fp.functional_call(model, p, (x,), masks=m))
        for name, g in torch.func.grad(loss)(p, m).items():
            for label in grads:
                torch.testing.assert_close(grads[label][name][k], g)


def test_conv_rule_unbatched_image():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3)
    params = {n: p.detach() for n, p in conv.named_parameters()}
    masks = fp.masks_for_seeds(params, fp.random_unstructured, K, 0.5, include=["weight"])
    image = torch.randn(2, 5, 5)  # (C, H, W), no batch dim
    for stacked, p in (("masks", params), ("both", fp.stack([params] * K))):
        got = fp.stacked_call(conv, p, (image,), masks=masks, stacked=stacked, conv="auto")
        torch.testing.assert_close(got, fp.stacked_call(conv, p, (image,), masks=masks, stacked=stacked, conv="torch"))
        assert got.shape == (K, 3, 3, 3)


def test_conv_option_errors():
    model, params, masks, x, _ = setup("cpu")
    with pytest.raises(ValueError, match="conv must be one of"):
        fp.stacked_call(model, params, (x,), masks=fp.stack(masks), conv="grouped")
    with pytest.raises(ValueError, match="conv must be one of"):
        fp.vmap_stacked(lambda a: a, 0, conv="fast")


def test_misused_stacked_call_names_the_leaf_and_the_fix():
    # each misuse names the leaf and the fix (not vmap's "Expected all tensors to have the same size").
    model, params, masks, x, _ = setup("cpu")
    with pytest.raises(TypeError, match=r"got a list of 4 masks trees: pass funcprune\.stack\(masks\)"):
        fp.stacked_call(model, params, (x,), masks=masks)
    with pytest.raises(
        ValueError,
        match=r"^conv\.weight: stacked masks leaf has shape \(4, 2, 3, 3\), expected "
        r"\(K, \*\(4, 2, 3, 3\)\) .*not stacked",
    ):
        fp.stacked_call(model, params, (x,), masks=masks[1])
    ragged = {**fp.stack(masks), "fc.weight": fp.stack(masks[:3])["fc.weight"]}
    with pytest.raises(
        ValueError,
        match=r"^fc\.weight: stacked masks leaf has leading dim K=3, but 'conv\.weight' "
        r"has K=4",
    ):
        fp.stacked_call(model, params, (x,), masks=ragged)
    with pytest.raises(ValueError, match=r"^fc\.bias: stacked params leaf has shape \(3,\)"):
        fp.stacked_call(model, {**fp.stack([params] * K), "fc.bias": params["fc.bias"]}, (x,), stacked="params")
    with pytest.raises(ValueError, match="needs stacked masks"):
        fp.stacked_call(model, params, (x,))
    model.train()
    with pytest.raises(ValueError, match=r"bn \(BatchNorm2d\) is in train mode.*call_with_buffers"):
        fp.stacked_call(model, params, (x,), masks=fp.stack(masks))
    # with its running stats stacked among the params, each subnetwork updates its own copy
    buffers = fp.stack([{n: b.clone() for n, b in model.named_buffers()}] * K)
    out = fp.stacked_call(model, {**fp.stack([params] * K), **buffers}, (x,), masks=fp.stack(masks), stacked="both")
    assert out.shape == (K, 5, 3) and int(buffers["bn.num_batches_tracked"][0]) == 1


def test_sibling_defaults_agree():
    import inspect

    defaults = [
        {
            name: p.default
            for name, p in inspect.signature(fn).parameters.items()
            if name in ("conv", "chunk_size", "randomness")
        }
        for fn in (fp.stacked_call, fp.vmap_stacked)
    ]
    assert defaults[0] == defaults[1] == {"chunk_size": None, "randomness": "error", "conv": "torch"}
