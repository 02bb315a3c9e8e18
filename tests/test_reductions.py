"""ssfer_jax/reductions: the CPU forms (matrix products) against plain reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssfer_jax import reductions


def _tree():
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  return {"conv": jax.random.normal(k[0], (3, 3, 16, 32)),        # large: Gram / GEMV path
          "odd": jax.random.normal(k[1], (4099, 3)),               # large, not divisible by 16
          "bias": jax.random.normal(k[2], (32,)),                  # small
          "scalar": jnp.float32(-2.5),
          "half": jax.random.normal(k[3], (64, 96)).astype(jnp.bfloat16),
          "count": jnp.arange(5)}                                  # integer: ignored


@pytest.fixture(params=["cpu form", "plain form"])
def form(request, monkeypatch):
  if request.param == "plain form":
    monkeypatch.setattr(reductions, "on_cpu", lambda: False)
  return request.param


def test_channel_sum(form):
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 9, 11, 24)) + 3.0
  got = jax.jit(reductions.channel_sum)(x)
  expect = np.asarray(x, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(np.asarray(got), expect, rtol=2e-6)
  assert got.shape == (24,)


def test_channel_sum_rounding_is_float32_sized(form):
  """50,176 values per channel: the error stays at float32 size relative to sum(|x|)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 56, 56, 8)) + 1.0
  exact = np.asarray(x, np.float64).sum((0, 1, 2))
  scale = np.abs(np.asarray(x, np.float64)).sum((0, 1, 2))
  err = np.abs(np.asarray(jax.jit(reductions.channel_sum)(x), np.float64) - exact)
  assert (err / scale).max() < 2e-6


def test_global_norm(form):
  """Against float64, and against optax.tree.norm where the leaves are float32 (optax
  squares a bfloat16 leaf in bfloat16; here every leaf is squared in float32)."""
  tree = _tree()
  floats = [np.asarray(v, np.float64) for k, v in tree.items() if k != "count"]
  got = float(jax.jit(reductions.global_norm)(tree))
  np.testing.assert_allclose(got, np.sqrt(sum((v * v).sum() for v in floats)), rtol=1e-6)
  f32 = {k: v for k, v in tree.items() if v.dtype == jnp.float32}
  np.testing.assert_allclose(float(jax.jit(reductions.global_norm)(f32)),
                             float(optax.tree.norm(f32)), rtol=1e-6)
  assert float(jax.jit(reductions.sum_of_squares)({})) == 0.0


@pytest.mark.parametrize("leaf", ["conv", "odd", "bias", "scalar", "half"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_any_nonfinite_finds_every_nan_and_inf(form, leaf, value):
  tree = _tree()
  check = jax.jit(reductions.any_nonfinite)
  assert not bool(check(tree))
  x = tree[leaf]
  for index in ((0,) * x.ndim, tuple(d - 1 for d in x.shape)):   # first and last element
    bad = dict(tree, **{leaf: x.at[index].set(value) if x.ndim else jnp.float32(value)})
    assert bool(check(bad)), (leaf, value, index)


def test_any_nonfinite_large_finite_values_and_empty_trees(form):
  big = {"conv": jnp.full((3, 3, 16, 32), 3e38), "bias": jnp.full((8,), -3e38)}
  assert not bool(jax.jit(reductions.any_nonfinite)(big))   # finite, however large
  assert not bool(reductions.any_nonfinite({"count": jnp.arange(3)}))
  assert not bool(reductions.any_nonfinite({}))
