"""A small VGG-style CNN with BatchNorm: the CPU default and the model of the fast tests."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from ssfer_jax.models import batch_norm, pooling


class SmallCNN(nn.Module):
  """A (conv-BN-ReLU) stem + 2x2 max-pool, then stages of (conv-BN-ReLU) x2 with a 2x2
  max-pool between them. Returns the last feature map (stride 2**(len(widths)-1): a 40 px
  input gives 10x10 with the default three widths)."""
  widths: Sequence[int] = (16, 32, 64)
  dtype: Any = jnp.float32
  max_pool: str = "fast"    # pooling.max_pool impl: 'fast' | 'xla'
  batch_norm: str = "auto"  # batch_norm.module impl: 'auto' | 'fast' | 'flax'

  @nn.compact
  def __call__(self, x, train: bool):
    for i, width in enumerate(self.widths):
      for j in range(1 if i == 0 else 2):
        x = nn.Conv(width, (3, 3), use_bias=False, dtype=self.dtype, name=f"conv{i}_{j}")(x)
        x = batch_norm.module(self.batch_norm)(use_running_average=not train, momentum=0.9,
                                               dtype=self.dtype, name=f"bn{i}_{j}")(x)
        x = nn.relu(x)
      if i < len(self.widths) - 1:
        x = pooling.max_pool(x, (2, 2), strides=(2, 2), impl=self.max_pool)
    return x
