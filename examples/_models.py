"""Small models shared by the examples, the tests and the benchmarks (defined once, here)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LeNet(nn.Module):
    """The LeNet of PyTorch's pruning tutorial.

    Args:
      kernel_size: 3 (the tutorial's; takes 1x28x28 images) or 5 (LeNet-5; takes 1x32x32 images).
        Either way ``fc1`` sees 16 channels of 5x5.
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if kernel_size not in (3, 5):
            raise ValueError(f"kernel_size should be 3 or 5, got {kernel_size}")
        self.conv1 = nn.Conv2d(1, 6, kernel_size)  # 1 input image channel, 6 output channels
        self.conv2 = nn.Conv2d(6, 16, kernel_size)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)

    @property
    def input_size(self) -> int:
        """Side of the square 1-channel images this LeNet takes (28 or 32)."""
        return 28 if self.conv1.kernel_size[0] == 3 else 32
