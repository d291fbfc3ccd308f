"""Reference procedures for one-shot pruning, written from the papers' code (test oracles only).

Wanda: locuslab/wanda ``lib/prune.py`` (``prune_wanda``) and ``lib/layerwrapper.py`` (``WrappedGPT``).
SparseGPT: IST-DASLab/sparsegpt ``sparsegpt.py`` (``SparseGPT.fasterprune``) and ``llama.py``.
OWL: luuyin/OWL ``lib/prune_all.py`` (``prune_wanda_outlier``, ``check_outlier_mean``).
They mutate what they are given, use boolean indexing and sorts, as the originals do. The model
procedure is the papers' sequential loop made generic over the block list (their scripts hard-code
``model.model.layers``) and over transformers' Conv1D (GPT-2), whose weight is the transpose.
"""

import copy

import numpy as np
import torch


def wanda_mask(W_metric, sparsity_ratio, prune_n=0, prune_m=0, count=int):
    """``prune_wanda``'s pruned mask (True = pruned) from the metric, per row (``prune_n`` pruned of ``prune_m``).

    ``count=round`` replaces the script's floor by torch's rounding (funcprune's rule; they differ
    only where ``sparsity * columns`` is not whole, e.g. at OWL's per-block amounts).
    """
    W_mask = torch.zeros_like(W_metric) == 1
    if prune_n != 0:
        for ii in range(W_metric.shape[1]):
            if ii % prune_m == 0:
                tmp = W_metric[:, ii : (ii + prune_m)].float()
                W_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
    else:
        sort_res = torch.sort(W_metric, dim=-1, stable=True)
        indices = sort_res[1][:, : count(W_metric.shape[1] * sparsity_ratio)]
        W_mask.scatter_(1, indices, True)
    return W_mask


class WrappedGPT:
    """``layerwrapper.WrappedGPT``: a running mean of the squared input norms (``scaler_row``)."""

    def __init__(self, columns, device, dtype=torch.float32):
        self.scaler_row = torch.zeros(columns, device=device, dtype=dtype)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t().to(self.scaler_row.dtype)
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


class SparseGPTRef:
    """``sparsegpt.SparseGPT``: the running Hessian ``2/n sum x xᵀ`` and ``fasterprune``."""

    def __init__(self, columns, device, dtype=torch.float32):
        self.H = torch.zeros((columns, columns), device=device, dtype=dtype)
        self.nsamples = 0

    def add_batch(self, inp):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = (2 / self.nsamples) ** 0.5 * inp.to(self.H.dtype)
        self.H += inp.matmul(inp.t())


def fasterprune(W, H, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01, exact=False):
    """``SparseGPT.fasterprune`` on a weight ``W`` (Linear layout) and Hessian ``H``: (new W, pruned mask).

    ``prunen`` is the number PRUNED per group of ``prunem`` (the script's convention). ``exact=True``
    replaces the reference's threshold ``sorted[int(n * sparsity)]`` (which prunes one more than
    asked, and all entries tied with it) by ``sorted[round(n * sparsity) - 1]`` (exactly the asked count
    without ties): the one deliberate difference of funcprune.oneshot.sparsegpt.
    """
    W = W.clone().to(H.dtype)
    H = H.clone()
    rows, columns = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns, device=W.device)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            if exact:
                k = round(tmp.numel() * sparsity)
                mask1 = (tmp <= torch.sort(tmp.flatten())[0][k - 1]) if k > 0 else torch.zeros_like(tmp) == 1
            else:
                thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
                mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = W1[:, i : (i + prunem)] ** 2 / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, pruned


def outlier_percent(layer_wmetric, M):
    """``check_outlier_mean`` over ``torch.cat`` of a block's flattened metrics: percent above ``M * mean``."""
    flat = torch.cat([torch.flatten(x.cpu()) for x in layer_wmetric])
    return ((flat > torch.mean(flat) * M).sum() / flat.numel()).item() * 100


def owl_amounts(all_layer_ratio, sparsity_ratio, Lamda):
    """``prune_wanda_outlier``'s per-block sparsities from the outlier ratios."""
    all_layer_ratio = np.array(all_layer_ratio)
    all_layer_ratio = (all_layer_ratio - all_layer_ratio.min()) * (
        1 / (all_layer_ratio.max() - all_layer_ratio.min()) * Lamda * 2
    )
    all_layer_ratio = all_layer_ratio - np.mean(all_layer_ratio) + (1 - sparsity_ratio)
    return [1 - r for r in all_layer_ratio]


def _linears(block):
    """``find_layers``: the block's Linear (and transformers Conv1D) modules by name."""
    found = {}
    for name, mod in block.named_modules():
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            found[name] = mod
    return found


def _as_linear(mod):
    return mod.weight.data.t() if type(mod).__name__ == "Conv1D" else mod.weight.data


def _set(mod, w):
    mod.weight.data = (w.t() if type(mod).__name__ == "Conv1D" else w).to(mod.weight.dtype).contiguous()


class _Stop(Exception):
    pass


def prune_model(
    model,
    blocks_name,
    batches,
    method,
    sparsity,
    prune_n=0,
    prune_m=0,
    sequential=True,
    dtype=torch.float32,
    blocksize=128,
    percdamp=0.01,
    exact=True,
    owl=None,
    count=int,
):
    """The papers' sequential procedure on a copy of ``model``: {weight name: (weight, keep mask)}.

    ``owl=(M, Lamda)`` first computes OWL's per-block sparsities from the dense model's Wanda
    metrics (``prune_wanda_outlier``). Returns the pruned copy's linear weights and keep masks.
    """
    model = copy.deepcopy(model).eval()  # the scripts call model.eval() first
    layers = model.get_submodule(blocks_name)
    dense = copy.deepcopy(layers) if not sequential or owl else None
    cache = []

    def catch(module, args, kwargs):
        cache.append((args[0], args[1:], dict(kwargs)))
        raise _Stop

    handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    for batch in batches:
        try:
            if isinstance(batch, dict):
                model(**batch, use_cache=False)
            else:
                model(batch, use_cache=False)
        except _Stop:
            pass
    handle.remove()

    def run(layer, inps):
        outs = []
        for h, args, kwargs in inps:
            out = layer(h, *args, **kwargs)
            outs.append((out[0] if isinstance(out, (tuple, list)) else out, args, kwargs))
        return outs

    def stats(layer, inps, kind):
        subset = _linears(layer)
        wrapped = {
            n: (WrappedGPT if kind == "wanda" else SparseGPTRef)(_as_linear(m).shape[1], _as_linear(m).device, dtype)
            for n, m in subset.items()
        }
        handles = [
            subset[n].register_forward_hook(lambda mod, inp, out, n=n: wrapped[n].add_batch(inp[0].data))
            for n in subset
        ]
        outs = run(layer, inps)
        for h in handles:
            h.remove()
        return subset, wrapped, outs

    ratios = None
    if owl is not None:
        inps = cache
        all_ratio = []
        for i in range(len(layers)):
            subset, wrapped, outs = stats(dense[i], inps, "wanda")
            metrics = [
                torch.abs(_as_linear(subset[n]).to(dtype)) * torch.sqrt(wrapped[n].scaler_row.reshape((1, -1)))
                for n in subset
            ]
            all_ratio.append(outlier_percent(metrics, owl[0]))
            inps = outs
        ratios = owl_amounts(all_ratio, sparsity, owl[1])

    result = {}
    inps, dense_inps = cache, cache
    for i in range(len(layers)):
        layer = layers[i]
        ratio = sparsity if ratios is None else ratios[i]
        source = layer if sequential else dense[i]
        subset, wrapped, dense_outs = stats(source, inps if sequential else dense_inps, method)
        subset = _linears(layer)
        for n, mod in subset.items():
            W = _as_linear(mod)
            if method == "wanda":
                metric = torch.abs(W.to(dtype)) * torch.sqrt(wrapped[n].scaler_row.reshape((1, -1)))
                pruned = wanda_mask(metric, ratio, prune_n, prune_m, count)
                W = W.clone()
                W[pruned] = 0
            else:
                W, pruned = fasterprune(W, wrapped[n].H, ratio, prune_n, prune_m, blocksize, percdamp, exact)
            _set(mod, W)
            name = f"{blocks_name}.{i}.{n}.weight"
            result[name] = (mod.weight.data, ~(pruned.t() if type(mod).__name__ == "Conv1D" else pruned))
        if sequential:
            inps = run(layer, inps)
        else:
            dense_inps = dense_outs
    return result
