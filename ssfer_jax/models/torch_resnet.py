"""torchvision's ResNet-18 layout in PyTorch: the state_dict keys ``ssfer_jax.tools.convert`` reads.

One definition for the two places that need a PyTorch twin of the backbone: the checkpoint
conversion tests (``tests/test_convert.py``) and the PyTorch reference step of the benchmarks
(``bench/torch_reference.py``). Needs torch (``pip install -e ".[torch]"``).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
  """torchvision's BasicBlock, with its attribute (= state_dict key) names."""

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.relu = nn.ReLU()
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + identity)


class ResNet18(nn.Module):
  """conv1, bn1, maxpool, layer1..4 and, with ``num_classes``, avg-pool + ``fc``.

  ``forward`` returns the last feature map (N, 512, H/32, W/32) without a classifier, the
  logits with one; ``features`` always returns the feature map. Convolutions start from
  torchvision's Kaiming-normal (fan-out) initialisation."""

  def __init__(self, num_classes: int | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU()
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, width in enumerate((64, 128, 256, 512)):
      setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, 2 if i else 1),
                                                   BasicBlock(width, width, 1)))
      cin = width
    self.fc = nn.Linear(512, num_classes) if num_classes else None
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def features(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    return x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    f = self.features(x)
    return f if self.fc is None else self.fc(f.mean((2, 3)))
