"""The models and weight sets the benchmarks prune: ResNet-18, ResNet-50-sized weights, MLP, LeNet.

Everything is hand-written (no torchvision) and seeded, so both libraries see identical tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from examples._models import LeNet  # the tutorial's LeNet, defined once for examples, tests and benchmarks


class _Basic(nn.Module):
    """ResNet basic block: two 3x3 convs with batch norm and a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """The torchvision ResNet-18 layout (11.7M conv/linear weights), written out by hand."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_Basic(cin, cout, stride), _Basic(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class MLP(nn.Module):
    """4 hidden layers of 1024 units."""

    def __init__(self, width: int = 1024, depth: int = 4, inputs: int = 1024, outputs: int = 10):
        super().__init__()
        sizes = [inputs] + [width] * depth
        self.body = nn.Sequential(*[m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(width, outputs)

    def forward(self, x):
        return self.head(self.body(x))


def resnet50_shapes() -> dict[str, tuple]:
    """Shapes of the conv/linear weights of a torchvision ResNet-50 (25.5M entries)."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    cin = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}."
            shapes[prefix + "conv1.weight"] = (width, cin, 1, 1)
            shapes[prefix + "conv2.weight"] = (width, width, 3, 3)
            shapes[prefix + "conv3.weight"] = (width * 4, width, 1, 1)
            if block == 0:
                shapes[prefix + "downsample.0.weight"] = (width * 4, cin, 1, 1)
            cin = width * 4
    shapes["fc.weight"] = (1000, 2048)
    return shapes


MODELS = {"resnet18": ResNet18, "mlp": MLP, "lenet": LeNet}
INPUTS = {"resnet18": (3, 224, 224), "mlp": (1024,), "lenet": (1, 28, 28)}


def build(name: str, seed: int = 0) -> nn.Module:
    """A seeded model by name (``resnet18``, ``mlp``, ``lenet``), in eval mode."""
    torch.manual_seed(seed)
    return MODELS[name]().eval()


def example_input(name: str, batch: int, seed: int = 1) -> torch.Tensor:
    """A seeded input batch for the model ``name``."""
    return torch.randn((batch,) + INPUTS[name], generator=torch.Generator().manual_seed(seed))


def prunable_names(module: nn.Module) -> list:
    """Names of the conv/linear weights: the tensors every benchmark prunes."""
    return [
        f"{name}.weight" if name else "weight"
        for name, m in module.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]


def weights(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Seeded prunable weights ``{name: tensor}`` of ``resnet18``, ``resnet50``, ``mlp`` or ``lenet``."""
    if name == "resnet50":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.randn(s, generator=g, dtype=dtype) for n, s in resnet50_shapes().items()}
    module = build(name, seed)
    params = dict(module.named_parameters())
    return {n: params[n].detach().to(dtype) for n in prunable_names(module)}


def flat_weights(total: int, leaves: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``total`` random entries split over ``leaves`` equal-ish 1-D tensors (the scaling run)."""
    g = torch.Generator().manual_seed(seed)
    sizes = [total // leaves + (i < total % leaves) for i in range(leaves)]
    return {f"w{i}": torch.randn(s, generator=g, dtype=dtype) for i, s in enumerate(sizes)}
