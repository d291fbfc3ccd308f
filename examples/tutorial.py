"""PyTorch's pruning tutorial, run on ``funcprune.compat`` by changing one import.

https://pytorch.org/tutorials/intermediate/pruning_tutorial.html, step by step: random 30% of
``conv1.weight``, L1 3 entries of ``conv1.bias``, L2 structured 50% of ``conv1.weight`` along
dim 0, serialization, ``remove``, pruning many parameters, global 20%, and a custom method.
``run(prune)`` takes the pruning module (``funcprune.compat`` or ``torch.nn.utils.prune``) and
records the model after every step, so the tests can check that both give identical
parameters, buffers, hooks, state_dict keys and outputs for the same seed.

Run (from a clone of the repository):  python -m examples.tutorial [--compare]
(--compare checks every step against torch.nn.utils.prune)
"""

import sys

import torch
import torch.nn as nn

import funcprune.compat as prune
from examples._models import LeNet  # the tutorial's LeNet (3x3 kernels; takes 1x28x28 images)


def record(model: nn.Module, x: torch.Tensor) -> dict:
    """Everything a user can observe of a (pruned) model: names, values, hooks and the output."""
    return {
        "parameters": [(n, p.detach().clone()) for n, p in model.named_parameters()],
        "buffers": [(n, b.clone()) for n, b in model.named_buffers()],
        "hooks": [(name, [_describe(h) for h in m._forward_pre_hooks.values()]) for name, m in model.named_modules()],
        "pruned": [
            (name, getattr(m, t).detach().clone())
            for name, m in model.named_modules()
            for t in ("weight", "bias")
            if hasattr(m, t + "_mask")
        ],
        "state_dict": list(model.state_dict()),
        "output": model(x).detach(),
    }


def _describe(hook):
    """A hook's class name and tensor name; a container's also lists the history it holds."""
    history = [type(method).__name__ for method in hook] if hasattr(hook, "_pruning_methods") else None
    return type(hook).__name__, getattr(hook, "_tensor_name", None), history


def custom_method(prune):
    """The tutorial's ``FooBarPruningMethod`` (prunes every other entry), written against ``prune``."""

    class FooBarPruningMethod(prune.BasePruningMethod):
        """Prune every other entry in a tensor."""

        PRUNING_TYPE = "unstructured"

        def compute_mask(self, t, default_mask):
            mask = default_mask.clone()
            mask.view(-1)[::2] = 0
            return mask

    def foobar_unstructured(module, name):
        FooBarPruningMethod.apply(module, name)
        return module

    return foobar_unstructured


def run(prune=prune, seed: int = 0) -> list:
    """Run every step of the tutorial with ``prune``; return ``[(step, record), ...]``."""
    torch.manual_seed(seed)
    x = torch.randn(4, 1, 28, 28)
    steps = []
    model = LeNet()
    module = model.conv1
    prune.random_unstructured(module, name="weight", amount=0.3)
    steps.append(("random_unstructured conv1.weight 30%", record(model, x)))
    prune.l1_unstructured(module, name="bias", amount=3)
    steps.append(("l1_unstructured conv1.bias 3", record(model, x)))
    prune.ln_structured(module, name="weight", amount=0.5, n=2, dim=0)
    steps.append(("ln_structured conv1.weight 50% dim 0", record(model, x)))
    prune.remove(module, "weight")
    steps.append(("remove conv1.weight", record(model, x)))

    new_model = LeNet()
    for _, sub in new_model.named_modules():
        if isinstance(sub, nn.Conv2d):
            prune.l1_unstructured(sub, name="weight", amount=0.2)
        elif isinstance(sub, nn.Linear):
            prune.l1_unstructured(sub, name="weight", amount=0.4)
    steps.append(("many parameters", record(new_model, x)))

    model = LeNet()
    parameters_to_prune = [
        (model.conv1, "weight"),
        (model.conv2, "weight"),
        (model.fc1, "weight"),
        (model.fc2, "weight"),
        (model.fc3, "weight"),
    ]
    prune.global_unstructured(parameters_to_prune, pruning_method=prune.L1Unstructured, amount=0.2)
    steps.append(("global 20%", record(model, x)))

    foobar_unstructured = custom_method(prune)
    model = LeNet()
    foobar_unstructured(model.fc3, name="bias")
    steps.append(("custom method", record(model, x)))
    foobar_unstructured(model.fc3, name="bias")
    steps.append(("custom method twice", record(model, x)))
    return steps


def main(argv) -> None:
    steps = run(prune)
    for step, state in steps:
        if "state_dict" in state:
            print(f"{step:40s} state_dict: {', '.join(k for k in state['state_dict'] if 'conv1' in k or 'fc3' in k)}")
    model = LeNet()
    parameters = [(m, "weight") for m in (model.conv1, model.conv2, model.fc1, model.fc2, model.fc3)]
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=0.2)
    for m, _ in parameters:
        pruned = 100.0 * float((m.weight == 0).sum()) / m.weight.nelement()
        print(f"sparsity in {type(m).__name__:6s} weight: {pruned:.2f}%")
    if "--compare" in argv:
        import torch.nn.utils.prune as torch_prune

        theirs = run(torch_prune)
        for (step, a), (_, b) in zip(steps, theirs):
            same = all(_equal(a[k], b[k]) for k in a)
            print(f"{step:40s} identical to torch.nn.utils.prune: {same}")


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


if __name__ == "__main__":
    main(sys.argv[1:])
