"""Reductions the train step needs, in forms that XLA:CPU runs fast.

XLA:CPU rewrites a large reduction (``x.sum()``, ``jnp.all(jnp.isfinite(x))``) into a
``reduce-window`` over blocks plus a small reduce, and runs the ``reduce-window`` as a
scalar loop; a dot whose operands have no free dimension (``jnp.vdot``) is turned into
such a reduction too. A matrix-vector or small matrix-matrix product, on the other
hand, runs in a vectorised, threaded library kernel. So on CPU:

* ``channel_sum``: the per-channel sum over every other axis is ``ones @ x[n]`` per image
  (batched over the leading axis), then a sum of the N partial sums. BatchNorm's
  statistics and its gradient's two sums use it (``models/batch_norm.py``).
* ``sum_of_squares`` / ``global_norm``: a large leaf viewed as (R, 16) rows gives its
  sum of squares as the trace of the 16 x 16 Gram matrix ``a.T @ a``.
* ``any_nonfinite``: ``zeros(R) @ x.reshape(R, C)`` is 0 where every element is finite
  and NaN where one is NaN or +-inf (0 * inf = NaN), with no overflow: a finite value,
  however large, contributes exactly 0. It reads each element once and writes nothing.

Measured (``python bench/reductions.py``, 2-core AVX-512, jax 0.10.2, quiet; compiled with
the ``eigen`` options that ``auto`` gives the step on AVX2 / AVX-512; docs/performance.md):
a (16, 56, 56, 64) per-channel sum 1.59 ms plain against 0.17 ms here; the norm of a
ResNet-18's parameters 19.8 ms against 4.3 ms; the NaN/inf check over four ResNet-18-sized
trees 21.9 ms against 6.1 ms. Rounding is of the same order as XLA's: 2e-7 to 5e-7
relative in the shapes measured (XLA's sum: 3e-7 to 4e-6, better for narrow (C = 8)
arrays, worse for wide ones).

Where the plain forms are used instead:
* on other backends (GPU, TPU), where XLA's own reductions are fused and fast and these
  forms were not measured (all three functions);
* for ``sum_of_squares`` and ``any_nonfinite``, on more than one device. Their
  reshapes merge a leaf's axes, and an FSDP-sharded axis merged into a larger one cannot
  stay split: XLA would all-gather every large gradient (``channel_sum`` keeps the
  batch axis leading and is unaffected).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

GRAM_WIDTH = 16        # columns of the (R, 16) view whose Gram trace is a leaf's sum of squares
GRAM_MIN_SIZE = 4096   # smaller (or not divisible) leaves use sum(x * x)


def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def _matrix_forms() -> bool:
  """Whole-leaf reshapes are safe and fast: CPU, one device (see the module docstring)."""
  return on_cpu() and jax.device_count() == 1


def channel_sum(x: jax.Array) -> jax.Array:
  """Sum of an (N, ..., C) array over every axis but the last. On CPU: one
  ``ones(R) @ x[n]`` product per image and a sum of the N partial sums, so the batch
  axis stays leading (a batch sharded over devices stays sharded until the small sum)."""
  if not on_cpu():
    return x.sum(tuple(range(x.ndim - 1)))
  n, c = x.shape[0], x.shape[-1]
  rows = x.reshape(n, -1, c)
  ones = jnp.ones((n, 1, rows.shape[1]), x.dtype)
  partial = lax.dot_general(ones, rows, (((2,), (1,)), ((0,), (0,))),
                            precision=lax.Precision.HIGHEST)          # (N, 1, C)
  return partial.sum((0, 1))


def _floating_leaves(tree):
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


def _total(vectors) -> jax.Array:
  """Sum of all elements of a list of float32 vectors, as one product with ones. (XLA
  splits a ``sum(concatenate(...))`` back into one reduction per part, each a thunk
  and a ``reduce-window`` on CPU; a dot's operand is not split.)"""
  v = jnp.concatenate(vectors)
  v = jnp.pad(v, (0, -v.size % GRAM_WIDTH)).reshape(-1, GRAM_WIDTH)
  return jnp.sum(jnp.dot(jnp.ones((v.shape[0],), v.dtype), v, precision=lax.Precision.HIGHEST))


def _large(x) -> bool:
  return x.size >= GRAM_MIN_SIZE and x.size % GRAM_WIDTH == 0


def sum_of_squares(tree) -> jax.Array:
  """Sum of the squares of every floating element of ``tree``, float32."""
  leaves = [x.astype(jnp.float32) for x in _floating_leaves(tree)]
  if not leaves:
    return jnp.float32(0.0)
  if not _matrix_forms():
    return sum(jnp.sum(x * x) for x in leaves)
  parts = []
  for x in leaves:
    if _large(x):
      a = x.reshape(-1, GRAM_WIDTH)
      gram = lax.dot_general(a, a, (((0,), (0,)), ((), ())), precision=lax.Precision.HIGHEST)
      parts.append(jnp.diagonal(gram))
    else:
      parts.append((x * x).reshape(-1))
  return _total(parts)


def global_norm(tree) -> jax.Array:
  """The L2 norm of ``tree`` (as ``optax.tree.norm``), float32."""
  return jnp.sqrt(sum_of_squares(tree))


def plain_any_nonfinite(tree) -> jax.Array:
  """``any_nonfinite`` as one ``all(isfinite)`` per leaf: its form off CPU and on meshes,
  and ``bench/reductions.py``'s reference."""
  leaves = _floating_leaves(tree)
  if not leaves:
    return jnp.bool_(False)
  return ~jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]).all()


def any_nonfinite(tree) -> jax.Array:
  """True when a floating leaf of ``tree`` holds a NaN or an inf. One pass over the
  values, no host transfer; ``checkpoint`` uses it on a restored state."""
  leaves = _floating_leaves(tree)
  if not leaves or not _matrix_forms():
    return plain_any_nonfinite(tree)
  probes = []  # 0 where finite, NaN where not; no value overflows
  for x in leaves:
    if _large(x):
      a = x.reshape(-1, x.shape[-1])
      zeros = jnp.zeros((a.shape[0],), a.dtype)
      probes.append(jnp.dot(zeros, a, precision=lax.Precision.HIGHEST).astype(jnp.float32))
    else:
      probes.append((x.astype(jnp.float32) * 0.0).reshape(-1))
  return ~jnp.isfinite(_total(probes))
