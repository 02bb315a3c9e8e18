"""ResNet-18 / ResNet-50 backbones (Flax linen, NHWC, BatchNorm).

The layout follows torchvision's ResNet (7x7/2 stem, 3x3/2 max-pool, four stages)
so that ``ssfer_jax.tools.convert`` can map a PyTorch ``state_dict`` onto it one to one:
module names here are ``conv1``, ``bn1``, ``layer{1..4}_{i}`` with ``conv{1,2,3}``,
``bn{1,2,3}`` and ``downsample_conv`` / ``downsample_bn``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssfer_jax.models import batch_norm, pooling

ModuleDef = Any


class _Block(nn.Module):
  """What both residual blocks share: their fields, and the shortcut added before the last
  ReLU (a strided 1x1 convolution + BatchNorm where the branch changes the shape)."""
  filters: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef

  def _add_shortcut(self, x, y):
    if x.shape != y.shape:
      x = self.conv(y.shape[-1], (1, 1), (self.strides, self.strides), name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class BasicBlock(_Block):
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)),
                  name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
    y = self.norm(name="bn2", scale_init=nn.initializers.ones)(y)
    return self._add_shortcut(x, y)


class Bottleneck(_Block):
  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (1, 1), name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), (self.strides, self.strides), padding=((1, 1), (1, 1)),
                  name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.filters * 4, (1, 1), name="conv3")(y)
    y = self.norm(name="bn3")(y)
    return self._add_shortcut(x, y)


class ResNet(nn.Module):
  """Returns the last convolutional feature map (N, H/32, W/32, C)."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  dtype: Any = jnp.float32
  max_pool: str = "fast"    # pooling.max_pool impl: 'fast' | 'xla'
  batch_norm: str = "auto"  # batch_norm.module impl: 'auto' | 'fast' | 'flax'

  @nn.compact
  def __call__(self, x, train: bool):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))
    norm = functools.partial(batch_norm.module(self.batch_norm),
                             use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             dtype=self.dtype)
    x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
    x = nn.relu(norm(name="bn1")(x))
    x = pooling.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), impl=self.max_pool)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.width * 2**i, strides, conv=conv, norm=norm,
                           name=f"layer{i + 1}_{j}")(x)
    return x


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
