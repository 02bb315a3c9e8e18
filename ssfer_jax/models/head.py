"""The FER network: backbone -> [local attention] -> [feature-map dropout] -> head.

Head (SPEC §1.4, as in the Ada-CM / DTM code): global average pool -> dropout ->
L2-normalise -> linear. ``__call__`` returns a dict with ``logits`` (float32) and
``features`` (the L2-normalised embedding, used by contrastive losses).

``norm_scale`` multiplies the unit-norm embedding before the linear layer. With 1.0 this
is exactly the head above; a larger value (the default configs use 16, as cosine-style
classifiers do) lets the logits reach confident values in a few hundred steps instead of
waiting for the linear weights to grow, which matters for confidence-thresholded
methods on short schedules.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ssfer_jax.models.local_attention import FeatureMapDropout, LocalAttention


class FERNet(nn.Module):
  backbone: nn.Module
  num_classes: int
  head_dropout: float = 0.5
  norm_scale: float = 1.0
  attention: bool = False
  attention_mode: str = "pixel"
  attention_grid: int = 3
  feature_dropout: float = 0.0
  feature_dropout_block: float = 0.35
  feature_dropout_mode: str = "random_block"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    f = self.backbone(x.astype(self.dtype), train=train)
    attention = None
    if self.attention:
      f, attention = LocalAttention(self.attention_mode, self.attention_grid, self.dtype,
                                    name="local_attention")(f)
    f = FeatureMapDropout(self.feature_dropout, self.feature_dropout_block,
                          self.feature_dropout_mode, name="feature_dropout")(
                              f, attention, train=train)
    pooled = jnp.mean(f.astype(jnp.float32), axis=(1, 2))
    pooled = nn.Dropout(self.head_dropout, deterministic=not train)(pooled)
    features = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(self.norm_scale * features)
    return {"logits": logits, "features": features}
