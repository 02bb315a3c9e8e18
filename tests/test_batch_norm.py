"""models/batch_norm.BatchNorm against flax.linen.BatchNorm: outputs, running statistics,
gradients (closed-form VJP), eval mode, dtypes, and the whole network."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssfer_jax.models import batch_norm


def _apply(module_cls, x, g, train=True, dtype=jnp.float32):
  """(loss, y, updated batch_stats, grads w.r.t. (params, x)) of sum(y * g)."""
  m = module_cls(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  c = x.shape[-1]
  params = {"scale": jnp.linspace(0.5, 2.0, c), "bias": jnp.linspace(-1.0, 1.0, c)}
  stats = {"mean": jnp.linspace(-0.2, 0.3, c), "var": jnp.linspace(0.5, 1.5, c)}

  def loss(p, x):
    y, upd = m.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * g), (y, upd["batch_stats"])

  (value, (y, upd)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      params, x)
  return value, y, upd, grads


@pytest.mark.parametrize("shape", [(8, 6, 6, 16), (3, 5, 7, 4), (16, 2, 2, 32), (5, 12)])
def test_train_mode_matches_flax(shape):
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), shape) + 1.0
  g = jax.random.normal(jax.random.PRNGKey(1), shape)
  ref = _apply(nn.BatchNorm, x, g)
  got = _apply(batch_norm.BatchNorm, x, g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_eval_mode_is_flax_bit_for_bit():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 5, 5, 8))
  g = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  ref = _apply(nn.BatchNorm, x, g, train=False)
  got = _apply(batch_norm.BatchNorm, x, g, train=False)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hand_computed_statistics_and_gradient():
  """Two channels over 4 positions, by hand: x = [[1, 0], [3, 0], [5, 2], [7, 2]]."""
  x = jnp.array([[1.0, 0.0], [3.0, 0.0], [5.0, 2.0], [7.0, 2.0]])
  g = jnp.array([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
  _, y, upd, (pgrads, dx) = _apply(batch_norm.BatchNorm, x, g)
  # mean (4, 1), biased var (5, 1); running: 0.9 * old + 0.1 * batch
  old_mean, old_var = np.array([-0.2, 0.3]), np.array([0.5, 1.5])
  np.testing.assert_allclose(upd["mean"], 0.9 * old_mean + 0.1 * np.array([4.0, 1.0]), rtol=1e-6)
  np.testing.assert_allclose(upd["var"], 0.9 * old_var + 0.1 * np.array([5.0, 1.0]), rtol=1e-6)
  inv = 1.0 / np.sqrt(np.array([5.0, 1.0]) + 1e-5)
  xhat = (np.asarray(x) - np.array([4.0, 1.0])) * inv
  np.testing.assert_allclose(y, xhat * np.array([0.5, 2.0]) + np.array([-1.0, 1.0]), rtol=1e-5)
  # d bias = sum(g), d scale = sum(g * xhat), dx = scale*inv*(g - mean(g) - xhat*mean(g*xhat))
  np.testing.assert_allclose(pgrads["bias"], [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(pgrads["scale"], (np.asarray(g) * xhat).sum(0), rtol=1e-5)
  expect = np.array([0.5, 2.0]) * inv * (np.asarray(g) - np.asarray(g).mean(0)
                                          - xhat * (np.asarray(g) * xhat).mean(0))
  np.testing.assert_allclose(dx, expect, rtol=1e-5, atol=1e-6)


def test_vjp_of_returned_statistics():
  """The statistics' own cotangents (zero in training) still get the right gradient."""
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 3, 3, 5)) + 0.5
  scale, bias = jnp.linspace(0.5, 1.5, 5), jnp.zeros(5)
  cot = tuple(jax.random.normal(jax.random.PRNGKey(i), s)
              for i, s in ((1, x.shape), (2, (5,)), (3, (5,))))

  def reference(x, scale, bias):
    mean = x.mean((0, 1, 2))
    var = jnp.maximum(0.0, (x * x).mean((0, 1, 2)) - mean * mean)
    y = (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias
    return y, mean, var

  fast = lambda x, s, b: batch_norm._train_norm(x, s, b, 1e-5, jnp.dtype(jnp.float32))
  _, pull_ref = jax.vjp(reference, x, scale, bias)
  _, pull_fast = jax.vjp(fast, x, scale, bias)
  for a, b in zip(pull_fast(cot), pull_ref(cot)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


def test_bfloat16_compute_keeps_float32_statistics():
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 4, 4, 8)).astype(jnp.bfloat16)
  g = jax.random.normal(jax.random.PRNGKey(1), x.shape)
  _, y_ref, upd_ref, (p_ref, dx_ref) = _apply(nn.BatchNorm, x, g, dtype=jnp.bfloat16)
  _, y, upd, (p_grads, dx) = _apply(batch_norm.BatchNorm, x, g, dtype=jnp.bfloat16)
  assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
  assert upd["mean"].dtype == jnp.float32 and upd["var"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                             rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(upd["var"], upd_ref["var"], rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32),
                             rtol=2e-2, atol=2e-2)
  for name in ("scale", "bias"):
    assert p_grads[name].dtype == jnp.float32
    np.testing.assert_allclose(p_grads[name], p_ref[name], rtol=2e-2, atol=2e-2)


def test_same_variables_as_flax_and_no_update_while_initialising():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 3, 6))
  ref = nn.BatchNorm(use_running_average=False, momentum=0.9).init(jax.random.PRNGKey(1), x)
  got = batch_norm.BatchNorm(use_running_average=False, momentum=0.9).init(
      jax.random.PRNGKey(1), x)
  assert jax.tree.structure(got) == jax.tree.structure(ref)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)   # mean 0, var 1: init does not update them


@pytest.mark.parametrize("backbone,size", [("small_cnn", 24), ("resnet18", 32)])
def test_network_fast_vs_flax(backbone, size):
  """The whole network, jitted, train mode: same variables, loss and gradients to rounding.
  Rounding is amplified through the layers (ResNet-18's last BatchNorms normalise over 8
  values here), so the tolerance is relative to each leaf's scale."""
  from conftest import network_gradients
  from ssfer_jax.config import base_config
  cfg = base_config().model
  cfg.backbone, cfg.head_dropout = backbone, 0.0
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, size, size, 3))
  y = jax.random.randint(jax.random.PRNGKey(1), (8,), 0, 7)
  out = {}
  for impl in ("fast", "flax"):
    cfg.batch_norm = impl
    out[impl] = network_gradients(cfg, x, y)
  assert jax.tree.structure(out["fast"][0]) == jax.tree.structure(out["flax"][0])
  flat_fast = jax.tree_util.tree_leaves_with_path(out["fast"])
  for (path, a), b in zip(flat_fast, jax.tree.leaves(out["flax"])):
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_resolve_and_bad_value():
  assert batch_norm.resolve("auto") == ("fast" if jax.default_backend() == "cpu" else "flax")
  assert batch_norm.module("flax") is nn.BatchNorm
  from ssfer_jax.config import base_config
  from ssfer_jax.models import build_model
  cfg = base_config().model
  cfg.batch_norm = "torch"
  with pytest.raises(ValueError, match=r"config.model.batch_norm='torch' is not one of"):
    build_model(cfg, 7)   # a config.json read by the tools, which build_model checks itself
  from conftest import tiny_config
  from ssfer_jax.config import validate
  with pytest.raises(ValueError, match=r"config.model.batch_norm='torch' is not valid: use one "
                     r"of 'auto', 'fast', 'flax'"):
    validate(tiny_config("fixmatch", **{"model.batch_norm": "torch"}))
