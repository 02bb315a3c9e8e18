"""Model construction from config: ``build_model(config.model, num_classes)``."""

from __future__ import annotations

import jax.numpy as jnp

from ssfer_jax.models import batch_norm, pooling
from ssfer_jax.models.head import FERNet
from ssfer_jax.models.resnet import ResNet18, ResNet50
from ssfer_jax.models.small_cnn import SmallCNN

BACKBONES = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "resnet50": ResNet50,
}


def build_model(model_cfg, num_classes: int) -> FERNet:
  if model_cfg.backbone not in BACKBONES:
    raise ValueError(f"config.model.backbone={model_cfg.backbone!r} is not one of "
                     f"{sorted(BACKBONES)}")
  # Runs written before config.model.max_pool existed lack the key; the choice changes
  # no parameter, so their checkpoints load with either.
  pool = model_cfg.get("max_pool", "fast")
  if pool not in pooling.IMPLS:
    raise ValueError(f"config.model.max_pool={pool!r} is not one of {pooling.IMPLS}")
  # Likewise config.model.batch_norm: runs written before it existed used flax's BatchNorm,
  # whose parameters and statistics are the same ones.
  norm = batch_norm.resolve(model_cfg.get("batch_norm", "flax"))
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_cfg.compute_dtype]
  return FERNet(
      backbone=BACKBONES[model_cfg.backbone](dtype=dtype, max_pool=pool, batch_norm=norm),
      num_classes=num_classes,
      head_dropout=model_cfg.head_dropout,
      norm_scale=model_cfg.norm_scale,
      attention=model_cfg.attention,
      attention_mode=model_cfg.attention_mode,
      attention_grid=model_cfg.attention_grid,
      feature_dropout=model_cfg.feature_dropout,
      feature_dropout_block=model_cfg.feature_dropout_block,
      feature_dropout_mode=model_cfg.feature_dropout_mode,
      dtype=dtype,
  )
