"""Max-pooling with a gradient that XLA:CPU runs fast.

``flax.linen.max_pool``'s gradient is XLA's ``select_and_scatter``, which XLA:CPU expands
into a variadic reduce-window over the values plus index (iota) tensors and a scatter.
In the profile of the ResNet-18 dta_snl step that expansion took 21 % of the step, more
than all convolutions of the small CNN together (docs/performance.md). ``max_pool`` here
has the same forward (one ``reduce_window``) and a custom VJP built from strided slices,
compares and interior-padded adds, which XLA fuses into one elementwise loop.

Tie rule: the gradient of each output goes to the *first* maximal element of its window
in row-major (height, then width) order, which is what ``select_and_scatter`` with a
``>=`` selector does, so the support of the gradient equals flax's. Windows that overlap
(ResNet's 3x3 / stride 2 stem pool) add their contributions in another order than XLA,
so values agree to float32 rounding; non-overlapping windows (the small CNN's 2x2 /
stride 2) give the same values. ``tests/test_pooling.py`` checks both against
``jax.vjp(flax.linen.max_pool)``, ties included.

``impl='xla'`` selects ``flax.linen.max_pool`` itself (``config.model.max_pool``), kept
for comparison in ``bench/train_step.py``.
"""

from __future__ import annotations

import functools
from typing import Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Padding = Union[str, Sequence[Tuple[int, int]]]
IMPLS = ("fast", "xla")


def _reduce_max(x, window, strides, padding):
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1,) + window + (1,),
                           (1,) + strides + (1,), ((0, 0),) + padding + ((0, 0),))


def _window_slices(xp, window, strides, out_hw):
  """(offset k, xs) over the window in row-major order; xs[n, i, j, c] is
  xp[n, i*sh + di, j*sw + dj, c], the element at offset (di, dj) of every window."""
  n, _, _, c = xp.shape
  (oh, ow), (sh, sw) = out_hw, strides
  for k in range(window[0] * window[1]):
    di, dj = divmod(k, window[1])
    yield k, lax.slice(xp, (0, di, dj, 0),
                       (n, di + (oh - 1) * sh + 1, dj + (ow - 1) * sw + 1, c), (1, sh, sw, 1))


def _pad(x, padding):
  (p0, p1), (q0, q1) = padding
  return jnp.pad(x, ((0, 0), (p0, p1), (q0, q1), (0, 0)), constant_values=-jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool_2d(x, window, strides, padding, in_hw):
  del in_hw  # the backward pass's output size (static)
  return _reduce_max(x, window, strides, padding)


def _max_pool_2d_fwd(x, window, strides, padding, in_hw):
  del in_hw
  # y stays the reduce_window of the primal (its NaN propagation included); the loop
  # below only locates the maximum.
  y = _reduce_max(x, window, strides, padding)
  # The offset of each window's first maximum (strict '>' keeps the earliest), found in
  # the forward pass and kept as a small integer residual. Comparing x with y again in
  # the backward pass would be wrong: XLA may recompute x there with other rounding
  # (e.g. contracted multiply-adds of the BatchNorm before the pool), and a window whose
  # maximum no longer compares equal would silently drop its gradient.
  best, arg = None, None
  for k, xs in _window_slices(_pad(x, padding), window, strides, y.shape[1:3]):
    if best is None:
      best, arg = xs, jnp.zeros(xs.shape, jnp.int8)
    else:
      better = xs > best
      best, arg = jnp.where(better, xs, best), jnp.where(better, jnp.int8(k), arg)
  return y, arg


def _max_pool_2d_bwd(window, strides, padding, in_hw, arg, g):
  (p0, p1), (q0, q1) = padding
  (n, _, _, c), (h, w) = g.shape, in_hw
  hp, wp = h + p0 + p1, w + q0 + q1
  (oh, ow), (sh, sw) = g.shape[1:3], strides
  zero = jnp.zeros((), g.dtype)
  dxp = jnp.zeros((n, hp, wp, c), g.dtype)
  for k in range(window[0] * window[1]):
    di, dj = divmod(k, window[1])
    # Interior padding puts output (i, j) at padded input (i*sh + di, j*sw + dj).
    dxp = dxp + lax.pad(jnp.where(arg == k, g, zero), zero,
                        ((0, 0, 0), (di, hp - di - (oh - 1) * sh - 1, sh - 1),
                         (dj, wp - dj - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
  return (dxp[:, p0:hp - p1, q0:wp - q1, :],)


_max_pool_2d.defvjp(_max_pool_2d_fwd, _max_pool_2d_bwd)


def _explicit_padding(padding: Padding, ndim: int) -> tuple:
  if isinstance(padding, str):
    if padding.upper() != "VALID":
      raise ValueError(f"max_pool: padding {padding!r} is not supported; pass 'VALID' or "
                       "explicit ((lo, hi), (lo, hi)) pairs")
    return ((0, 0),) * ndim
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  if len(pads) != ndim:
    raise ValueError(f"max_pool: {len(pads)} padding pairs for a {ndim}-d window")
  return pads


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: Padding = "VALID", impl: str = "fast"):
  """NHWC max-pool with ``flax.linen.max_pool``'s semantics (explicit padding pads with
  -inf). ``impl='fast'``: the custom gradient above; ``'xla'``: flax's own."""
  if impl == "xla":
    return nn.max_pool(x, tuple(window_shape), strides=strides and tuple(strides),
                       padding=padding)
  if impl != "fast":
    raise ValueError(f"config.model.max_pool={impl!r} is not one of {IMPLS}")
  window = tuple(int(w) for w in window_shape)
  if x.ndim != 4 or len(window) != 2:
    raise ValueError(f"max_pool: expects NHWC input and a 2-d window, got x.shape={x.shape}, "
                     f"window_shape={window}")
  strides = tuple(int(s) for s in (strides or (1, 1)))
  if window[0] * window[1] > 127:
    raise ValueError(f"max_pool: window {window} has more than 127 elements; use impl='xla'")
  return _max_pool_2d(x, window, strides, _explicit_padding(padding, 2), tuple(x.shape[1:3]))
