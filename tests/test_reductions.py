"""ssfer_jax/reductions: the CPU forms (matrix products) against plain reductions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ssfer_jax import reductions, xla_options


def _tree():
  k = jax.random.split(jax.random.PRNGKey(0), 6)
  return {"conv": jax.random.normal(k[0], (3, 3, 16, 32)),        # large: Gram / GEMV path
          "odd": jax.random.normal(k[1], (4099, 3)),               # not divisible by 16: plain
          "bias": jax.random.normal(k[2], (32,)),                  # small
          "scalar": jnp.float32(-2.5),
          "half": jax.random.normal(k[3], (64, 96)).astype(jnp.bfloat16),
          "count": jnp.arange(5)}                                  # integer: ignored


@pytest.fixture(params=["cpu form", "cpu form, eigen", "plain form"])
def form(request, monkeypatch):
  """The tests run with 8 fake devices, where the module picks the plain forms for
  sum_of_squares / any_nonfinite; "cpu form" forces the one-device matrix forms, and
  "eigen" compiles them with the options ``auto`` gives the step on AVX2 / AVX-512."""
  if request.param.startswith("cpu form"):
    monkeypatch.setattr(reductions, "_matrix_forms", lambda: True)
  else:
    monkeypatch.setattr(reductions, "on_cpu", lambda: False)
    monkeypatch.setattr(reductions, "_matrix_forms", lambda: False)
  return request.param


def _jit(fn, form):
  if form.endswith("eigen"):
    options = xla_options.parse("eigen")[1]
    return lambda *a: jax.jit(fn).lower(*a).compile(compiler_options=options)(*a)
  return jax.jit(fn)


def test_channel_sum(form):
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 9, 11, 24)) + 3.0
  got = _jit(reductions.channel_sum, form)(x)
  expect = np.asarray(x, np.float64).sum((0, 1, 2))
  np.testing.assert_allclose(np.asarray(got), expect, rtol=2e-6)
  assert got.shape == (24,)


def test_channel_sum_rounding_is_float32_sized(form):
  """50,176 values per channel: the error stays at float32 size relative to sum(|x|)."""
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 56, 56, 8)) + 1.0
  exact = np.asarray(x, np.float64).sum((0, 1, 2))
  scale = np.abs(np.asarray(x, np.float64)).sum((0, 1, 2))
  err = np.abs(np.asarray(_jit(reductions.channel_sum, form)(x), np.float64) - exact)
  assert (err / scale).max() < 2e-6


def test_global_norm(form):
  """Against float64, and against optax.tree.norm where the leaves are float32 (optax
  squares a bfloat16 leaf in bfloat16; here every leaf is squared in float32)."""
  tree = _tree()
  floats = [np.asarray(v, np.float64) for k, v in tree.items() if k != "count"]
  got = float(_jit(reductions.global_norm, form)(tree))
  np.testing.assert_allclose(got, np.sqrt(sum((v * v).sum() for v in floats)), rtol=1e-6)
  f32 = {k: v for k, v in tree.items() if v.dtype == jnp.float32}
  np.testing.assert_allclose(float(jax.jit(reductions.global_norm)(f32)),
                             float(optax.tree.norm(f32)), rtol=1e-6)
  assert float(jax.jit(reductions.sum_of_squares)({})) == 0.0


@pytest.mark.parametrize("leaf", ["conv", "odd", "bias", "scalar", "half"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_any_nonfinite_finds_every_nan_and_inf(form, leaf, value):
  tree = _tree()
  check = _jit(reductions.any_nonfinite, form)
  assert not bool(check(tree))
  x = tree[leaf]
  for index in ((0,) * x.ndim, tuple(d - 1 for d in x.shape)):   # first and last element
    bad = dict(tree, **{leaf: x.at[index].set(value) if x.ndim else jnp.float32(value)})
    assert bool(check(bad)), (leaf, value, index)


def test_any_nonfinite_large_finite_values_and_empty_trees(form):
  big = {"conv": jnp.full((3, 3, 16, 32), 3e38), "bias": jnp.full((8,), -3e38)}
  assert not bool(_jit(reductions.any_nonfinite, form)(big))   # finite, however large
  assert not bool(reductions.any_nonfinite({"count": jnp.arange(3)}))
  assert not bool(reductions.any_nonfinite({}))


def test_fsdp_sharded_gradients_are_not_gathered():
  """On a mesh (here the 8 fake devices) the norm and the check keep a leaf sharded on any
  axis: no all-gather in the compiled program, only scalar reductions across devices."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(8), ("fsdp",))
  leaves = {"last": jnp.ones((3, 3, 64, 128)), "third": jnp.ones((3, 3, 64, 128))}
  specs = {"last": P(None, None, None, "fsdp"), "third": P(None, None, "fsdp", None)}
  tree = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in leaves.items()}
  for fn in (reductions.global_norm, reductions.any_nonfinite):
    text = jax.jit(fn).lower(tree).compile().as_text()
    assert "all-gather" not in text, fn.__name__
  np.testing.assert_allclose(float(jax.jit(reductions.global_norm)(tree)),
                             np.sqrt(2 * 3 * 3 * 64 * 128), rtol=1e-6)
