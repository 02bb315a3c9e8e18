"""Local attention enhancement and random feature-map dropout (SPEC §1.3).

**[reconstructed]** The paper states only "local attention enhancement" and "random
dropout of feature maps, so that no single local face region dominates". The rules
below are this project's reconstruction, modelled on CFRN (ICME 2023), and every
choice is a config option:

* ``LocalAttention``: on the last feature map F (N, H, W, C),
  ``A = sigmoid(conv1x1(F))`` with one output channel (``mode='pixel'``), or the same
  computed on F average-pooled to a k x k grid of face regions and broadcast back to
  each region (``mode='grid'``). Output ``F' = F * (1 + A)``; A is returned too.
* ``FeatureMapDropout``: training only. With probability ``rate`` per sample, zero one
  square spatial block of side ``ceil(block_frac * H)``: at a uniformly random position
  (``mode='random_block'``, DropBlock style) or centred on the most-attended location
  (``mode='max_attention'``); the sample is then rescaled by ``H*W / kept`` so the
  expected activation mass is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class LocalAttention(nn.Module):
  mode: str = "pixel"  # 'pixel' | 'grid'
  grid: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f):
    if self.mode == "pixel":
      logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="attn_conv")(f)
    elif self.mode == "grid":
      n, h, w, c = f.shape
      k = min(self.grid, h, w)
      # Region boundaries by integer division: every cell covers >= 1 pixel.
      rows = (jnp.arange(h) * k) // h
      cols = (jnp.arange(w) * k) // w
      region = rows[:, None] * k + cols[None, :]                      # (H, W) region id
      onehot = jax.nn.one_hot(region.reshape(-1), k * k, dtype=f.dtype)  # (HW, K)
      counts = onehot.sum(0)
      pooled = jnp.einsum("npc,pk->nkc", f.reshape(n, h * w, c), onehot) / counts[None, :, None]
      region_logits = nn.Conv(1, (1, 1), dtype=self.dtype, name="attn_conv")(
          pooled.reshape(n, k, k, c))
      logits = jnp.einsum("nk,pk->np", region_logits.reshape(n, k * k), onehot).reshape(n, h, w, 1)
    else:
      raise ValueError(f"model.attention_mode must be 'pixel' or 'grid', got {self.mode!r}")
    attention = jax.nn.sigmoid(logits.astype(jnp.float32)).astype(f.dtype)
    return f * (1.0 + attention), attention


def block_mask(key, shape, block, centers=None):
  """(N, H, W, 1) mask that is 0 on one block x block square per sample, 1 elsewhere.

  ``centers``: optional (N, 2) integer top-left corners; random when None.
  """
  n, h, w = shape
  if centers is None:
    ky, kx = jax.random.split(key)
    top = jax.random.randint(ky, (n,), 0, h - block + 1)
    left = jax.random.randint(kx, (n,), 0, w - block + 1)
  else:
    top, left = centers[:, 0], centers[:, 1]
  ys = jnp.arange(h)[None, :, None]
  xs = jnp.arange(w)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < top[:, None, None] + block) &
            (xs >= left[:, None, None]) & (xs < left[:, None, None] + block))
  return (~inside)[..., None]


class FeatureMapDropout(nn.Module):
  rate: float = 0.5
  block_frac: float = 0.35
  mode: str = "random_block"  # 'random_block' | 'max_attention'

  @nn.compact
  def __call__(self, f, attention=None, *, train: bool):
    if not train or self.rate <= 0.0:
      return f
    n, h, w, _ = f.shape
    block = max(1, min(h, math.ceil(self.block_frac * h)))
    key = self.make_rng("dropout")
    k_apply, k_pos = jax.random.split(key)
    centers = None
    if self.mode == "max_attention":
      if attention is None:
        raise ValueError("model.feature_dropout_mode='max_attention' needs model.attention=True")
      flat = jnp.argmax(attention[..., 0].reshape(n, h * w), axis=-1)
      cy, cx = flat // w, flat % w
      half = block // 2
      centers = jnp.stack([jnp.clip(cy - half, 0, h - block), jnp.clip(cx - half, 0, w - block)], -1)
    elif self.mode != "random_block":
      raise ValueError(f"model.feature_dropout_mode must be 'random_block' or 'max_attention', "
                       f"got {self.mode!r}")
    keep = block_mask(k_pos, (n, h, w), block, centers)
    apply = jax.random.bernoulli(k_apply, self.rate, (n, 1, 1, 1))
    keep = jnp.where(apply, keep, True)
    kept = keep.reshape(n, -1).sum(-1).astype(jnp.float32)
    scale = (h * w) / jnp.maximum(kept, 1.0)
    return f * keep.astype(f.dtype) * scale[:, None, None, None].astype(f.dtype)
