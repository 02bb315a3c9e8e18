"""BatchNorm whose batch statistics XLA:CPU computes fast.

XLA:CPU runs a large reduction such as ``x.sum((0, 1, 2))`` as a scalar loop
(``ssfer_jax/reductions.py`` says why and what it does instead). In the ResNet-18 dta_snl
step at 112 px, flax's BatchNorm statistics in the train-mode forward pass, and the
reductions of their gradient, were most of what the JAX step spent beyond PyTorch's
outside the convolutions (``docs/performance.md``, batch-norm section).

``BatchNorm`` here is a drop-in for ``flax.linen.BatchNorm`` as the backbones use it
(feature axis last, no ``axis_name``, ``use_fast_variance``): the same parameters
(``scale``, ``bias``), the same ``batch_stats`` (``mean``, ``var``, biased variance,
``momentum`` update skipped while initialising), statistics in float32, output in
``dtype``. In eval mode (running averages) it is flax's arithmetic, operation for
operation. In train mode the statistics are ``reductions.channel_sum``s, and the
gradient is the closed form of batch normalisation's VJP (``_train_bwd``) with its two
per-channel sums computed the same way; XLA's autodiff of flax's BatchNorm emits three
to four reductions per layer instead. Values agree with flax's to float32 rounding
(``tests/test_batch_norm.py``), not bit for bit. One exception: on a channel whose values
are all equal, XLA's autodiff of flax's ``E[x^2] - E[x]^2`` cancels badly and its input
gradient can be far off, while the closed form here stays close to the exact value.

``impl`` (``config.model.batch_norm``): ``'fast'`` is this module, ``'flax'`` is
``flax.linen.BatchNorm`` itself, and ``'auto'`` takes ``'fast'`` on CPU and ``'flax'`` on
GPU/TPU, where XLA's reductions are fused and fast and this module was not measured.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssfer_jax import reductions

IMPLS = ("auto", "fast", "flax")


def resolve(impl: str) -> str:
  """'auto' -> 'fast' on CPU, 'flax' elsewhere; other values are returned as given."""
  if impl not in IMPLS:
    raise ValueError(f"config.model.batch_norm={impl!r} is not one of {IMPLS}")
  if impl == "auto":
    return "fast" if reductions.on_cpu() else "flax"
  return impl


def _stats(x32):
  count = x32.size // x32.shape[-1]
  mean = reductions.channel_sum(x32) / count
  mean_sq = reductions.channel_sum(x32 * x32) / count
  return mean, jnp.maximum(0.0, mean_sq - mean * mean)        # flax's fast variance


def _normalize(x, mean, var, scale, bias, epsilon, dtype):
  """flax.linen.normalization._normalize's arithmetic, in its order."""
  y = x - mean
  mul = lax.rsqrt(var + epsilon) * scale
  return jnp.asarray(y * mul + bias, dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _train_norm(x, scale, bias, epsilon, dtype):
  """(y, mean, var) of train-mode batch normalisation."""
  return _train_fwd(x, scale, bias, epsilon, dtype)[0]


def _train_fwd(x, scale, bias, epsilon, dtype):
  x32 = x.astype(jnp.float32)
  mean, var = _stats(x32)
  y = _normalize(x32, mean, var, scale, bias, epsilon, dtype)
  return (y, mean, var), (x, mean, var, scale)


def _train_bwd(epsilon, dtype, res, cotangents):
  """With xhat = (x - mean) / sqrt(var + eps) and y = scale * xhat + bias over the
  count M of reduced positions:
      d bias = sum(dy),  d scale = sum(dy * xhat),
      dx = scale / sqrt(var + eps) * (dy - d bias / M - xhat * d scale / M)
         + d mean / M + d var * 2 (x - mean) / M
  (the last two terms carry cotangents of the returned statistics, zero in training:
  only the running averages read them)."""
  del dtype
  x, mean, var, scale = res
  dy, dmean, dvar = cotangents
  x32 = x.astype(jnp.float32)
  dy32 = dy.astype(jnp.float32)
  count = x32.size // x32.shape[-1]
  inv = lax.rsqrt(var + epsilon)
  centred = x32 - mean
  xhat = centred * inv
  dbias = reductions.channel_sum(dy32)
  dscale = reductions.channel_sum(dy32 * xhat)
  dx = (scale * inv) * (dy32 - dbias / count - xhat * (dscale / count))
  dx = dx + dmean / count + (2.0 / count) * dvar * centred
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(scale.dtype)


_train_norm.defvjp(_train_fwd, _train_bwd)


class BatchNorm(nn.Module):
  """``flax.linen.BatchNorm`` over the last axis with fast train-mode statistics (above)."""
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  scale_init: Callable = nn.initializers.ones
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", self.bias_init, (c,), jnp.float32)
    dtype = self.dtype or jnp.result_type(x, scale)
    if self.use_running_average:
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, dtype)
    y, mean, var = _train_norm(x, scale, bias, float(self.epsilon), jnp.dtype(dtype))
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y


def module(impl: str):
  """The BatchNorm class for ``config.model.batch_norm`` (resolved: 'fast' | 'flax')."""
  return {"fast": BatchNorm, "flax": nn.BatchNorm}[resolve(impl)]
