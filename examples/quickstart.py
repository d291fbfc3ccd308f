"""Quickstart: prune a LeNet functionally and run it through ``torch.func.functional_call``.

The model is the one of PyTorch's pruning tutorial. Nothing here mutates the module: params and
masks are plain dicts, and every pruning step returns new masks.

Run:  python examples/quickstart.py
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import funcprune as fp


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)   # 1 input image channel, 6 output channels, 5x5 conv
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def main():
    torch.manual_seed(0)
    model = LeNet()
    params = {name: p.detach() for name, p in model.named_parameters()}

    # 1. Random 30% of conv1.weight, then L2-structured 50% of its output channels on top.
    masks = fp.prune(params, fp.random_unstructured, 0.3, include=["conv1.weight"])
    masks = fp.prune(params, fp.ln_structured, 0.5, 2, 0, masks=masks, include=["conv1.weight"])
    # 2. The 3 smallest entries of conv1.bias.
    masks = fp.prune(params, fp.l1_unstructured, 3, masks=masks, include=["conv1.bias"])
    # 3. 20% of every other weight, layer by layer.
    others = lambda name, leaf: name.endswith("weight") and not name.startswith("conv1")
    masks = fp.prune(params, fp.l1_unstructured, 0.2, masks=masks, include=others)
    # 4. Then 40% of what is left across all weights at once (global magnitude pruning).
    masks = fp.global_unstructured(params, 0.4, masks, include=lambda name, leaf: name.endswith("weight"))

    x = torch.randn(8, 1, 32, 32)
    logits = fp.functional_call(model, params, masks, (x,))
    reference = torch.func.functional_call(model, fp.apply_masks(params, masks), (x,))
    assert torch.equal(logits, reference)

    report = fp.sparsity(masks, params)
    print(f"{'parameter':<14}{'shape':<18}{'pruned':>8}")
    for name, p in params.items():
        fraction = float(report.per_leaf[name]) if name in report.per_leaf else 0.0
        print(f"{name:<14}{str(tuple(p.shape)):<18}{fraction:>8.1%}")
    print(f"global sparsity: {float(report.fraction):.1%} of {report.total} parameters "
          f"({int(report.pruned)} pruned)")
    print(f"logits: {tuple(logits.shape)}, first row {logits[0, :3].tolist()}")


if __name__ == "__main__":
    main()
