"""models/pooling.max_pool against flax.linen.max_pool: forward, gradient (ties included)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssfer_jax.models import pooling

CASES = [  # (window, strides, padding): the two pools the models use, and odd ones
    ((2, 2), (2, 2), "VALID"),                 # small CNN
    ((3, 3), (2, 2), ((1, 1), (1, 1))),        # ResNet stem (overlapping windows)
    ((3, 2), (1, 2), ((0, 2), (1, 0))),        # uneven window, stride and padding
    ((2, 2), (1, 1), "VALID"),                 # stride 1: every interior element in 4 windows
]


def _inputs(kind, shape=(2, 9, 10, 3)):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  if kind == "ties":   # ReLU'd and rounded: many equal maxima, many all-zero windows
    x = jax.nn.relu(jnp.round(4 * x) / 4)
  elif kind == "constant":
    x = jnp.ones(shape)
  return x


def _vjp(fn, x, g):
  y, pullback = jax.vjp(fn, x)
  return y, pullback(g)[0]


@pytest.mark.parametrize("kind", ["random", "ties", "constant"])
@pytest.mark.parametrize("window,strides,padding", CASES)
def test_forward_and_gradient_match_flax(kind, window, strides, padding):
  x = _inputs(kind)
  ref_fn = lambda v: nn.max_pool(v, window, strides=strides, padding=padding)
  fast_fn = lambda v: pooling.max_pool(v, window, strides=strides, padding=padding)
  y_ref = ref_fn(x)
  g = jax.random.normal(jax.random.PRNGKey(1), y_ref.shape)
  y_ref, dx_ref = _vjp(ref_fn, x, g)
  y, dx = jax.jit(lambda v, gg: _vjp(fast_fn, v, gg))(x, g)
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  # Same support (which element of each window takes the gradient) ...
  np.testing.assert_array_equal(np.asarray(dx) != 0, np.asarray(dx_ref) != 0)
  # ... and the same values: exact without overlap, float32 rounding with it.
  overlap = any(w > s for w, s in zip(window, strides))
  if overlap:
    np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_ref))


def test_ties_send_the_gradient_to_the_first_maximum_in_row_major_order():
  # One 2x2 window whose four elements are equal: only (0, 0) gets the gradient.
  x = jnp.full((1, 2, 2, 1), 3.0)
  _, dx = _vjp(lambda v: pooling.max_pool(v, (2, 2), strides=(2, 2)), x, jnp.full((1, 1, 1, 1), 5.0))
  np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], [[5.0, 0.0], [0.0, 0.0]])
  # Maximum tied at (0, 1) and (1, 0): the row-major first, (0, 1), takes it.
  x = jnp.array([1.0, 4.0, 4.0, 2.0]).reshape(1, 2, 2, 1)
  _, dx = _vjp(lambda v: pooling.max_pool(v, (2, 2), strides=(2, 2)), x, jnp.ones((1, 1, 1, 1)))
  np.testing.assert_array_equal(np.asarray(dx)[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_overlapping_windows_accumulate_on_a_shared_maximum():
  # 1x3 input, 2-wide windows with stride 1: the middle element is the max of both windows.
  x = jnp.array([1.0, 9.0, 2.0]).reshape(1, 1, 3, 1)
  _, dx = _vjp(lambda v: pooling.max_pool(v, (1, 2), strides=(1, 1)), x,
               jnp.array([10.0, 100.0]).reshape(1, 1, 2, 1))
  np.testing.assert_array_equal(np.asarray(dx).ravel(), [0.0, 110.0, 0.0])


def test_padding_never_takes_the_gradient_even_for_negative_inputs():
  x = -jnp.ones((1, 3, 3, 1))
  _, dx = _vjp(lambda v: pooling.max_pool(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))),
               x, jnp.ones((1, 2, 2, 1)))
  assert float(dx.sum()) == 4.0   # each of the 4 windows sends its gradient to a real pixel


def test_bfloat16_forward_and_gradient():
  x = _inputs("random").astype(jnp.bfloat16)
  fn = lambda v: pooling.max_pool(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  ref = lambda v: nn.max_pool(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  g = jnp.ones(ref(x).shape, jnp.bfloat16)
  (y, dx), (y_ref, dx_ref) = _vjp(fn, x, g), _vjp(ref, x, g)
  assert y.dtype == dx.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(y_ref, np.float32))
  np.testing.assert_array_equal(np.asarray(dx, np.float32), np.asarray(dx_ref, np.float32))


def test_bad_arguments_are_named():
  x = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ValueError, match="SAME"):
    pooling.max_pool(x, (2, 2), padding="SAME")
  with pytest.raises(ValueError, match="config.model.max_pool='avg'"):
    pooling.max_pool(x, (2, 2), impl="avg")


def test_xla_impl_is_flax():
  x = _inputs("random")
  np.testing.assert_array_equal(
      np.asarray(pooling.max_pool(x, (2, 2), strides=(2, 2), impl="xla")),
      np.asarray(nn.max_pool(x, (2, 2), strides=(2, 2))))


@pytest.mark.parametrize("backbone,size", [("small_cnn", 40), ("resnet18", 32)])
def test_model_gradients_under_jit_match_flax_pool(backbone, size):
  """The whole network, jitted: the pool's input is then recomputed inside XLA fusions.
  A backward pass that re-compares x with y (the first prototype) lost the gradient of
  windows whose recomputed maximum no longer compared equal: 2-4 % errors here."""
  from conftest import network_gradients
  from ssfer_jax.config import base_config
  cfg = base_config().model
  cfg.backbone, cfg.head_dropout = backbone, 0.0
  x = jax.random.uniform(jax.random.PRNGKey(0), (16, size, size, 3))
  y = jax.random.randint(jax.random.PRNGKey(1), (16,), 0, 7)
  grads = {}
  for impl in pooling.IMPLS:
    cfg.max_pool = impl
    grads[impl] = network_gradients(cfg, x, y)[2]
  flat_fast = jax.tree_util.tree_leaves_with_path(grads["fast"])
  flat_xla = jax.tree.leaves(grads["xla"])
  for (path, a), b in zip(flat_fast, flat_xla):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))
