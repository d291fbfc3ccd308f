"""Shared helpers for the examples: scikit-learn's digits (1,797 real 8x8 images), an MLP, and a
``torch.func`` training step on ``(params, masks)``.

The data ships with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

import funcprune as fp

Params = dict[str, torch.Tensor]


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: pixels scaled to [0, 1], a fixed random split."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def make_model() -> nn.Module:
    """A 64-128-64-10 MLP: 17,226 parameters, ~97% test accuracy on digits when dense."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def init_params(seed: int) -> Params:
    """PyTorch-default initial params of :func:`make_model` drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {name: p.detach() for name, p in make_model().named_parameters()}


def is_weight(name: str, leaf: torch.Tensor) -> bool:
    """Prune weights, not biases (the usual choice, and torch's tutorial's)."""
    return name.endswith("weight")


def batches(
    x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int = 128, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` minibatches from reshuffled epochs, in an order fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    start = 0
    for _ in range(steps):
        if start + batch_size > len(y):
            order, start = torch.randperm(len(y), generator=gen), 0
        idx = order[start : start + batch_size]
        start += batch_size
        yield x[idx], y[idx]


def make_step(model: nn.Module, lr: float = 0.5, weight_decay: float = 1e-4, pruned: str = "zero"):
    """``step(params, masks, x, y) -> (params, loss)``: one SGD step through ``torch.func.grad``.

    Gradients of pruned entries are zero (``functional_call`` masks the params); weight decay would
    still move them, so :func:`funcprune.masked_update` applies the ``pruned`` policy afterwards.
    """

    def loss(params: Params, masks: Params | None, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(fp.functional_call(model, params, (x,), masks=masks), y)

    def step(params: Params, masks: Params | None, x: torch.Tensor, y: torch.Tensor):
        grads, value = torch.func.grad_and_value(loss)(params, masks, x, y)
        updated = {n: p - lr * (grads[n] + weight_decay * p) for n, p in params.items()}
        return fp.masked_update(params, updated, masks, pruned=pruned), value

    return step


def train(
    model: nn.Module, params: Params, masks: Params | None, data, steps: int, seed: int = 0, **step_options
) -> Params:
    """``steps`` SGD steps of one (sparse) network, minibatches fixed by ``seed``."""
    step = make_step(model, **step_options)
    for x, y in batches(data[0], data[1], steps, seed=seed):
        params, _ = step(params, masks, x, y)
    return params


def accuracy(model: nn.Module, params: Params, masks: Params | None, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified correctly by the masked network."""
    with torch.no_grad():
        return float((fp.functional_call(model, params, (x,), masks=masks).argmax(dim=-1) == y).float().mean())
