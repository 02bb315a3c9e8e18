"""models/conv.Conv against flax.linen.Conv and XLA's autodiff of lax.conv_general_dilated:
parameters, forward pass, input and kernel gradients over strides, paddings and both
placements of the kernel's spatial flip, and gradients through whole networks."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssfer_jax.models import conv

DN = ("NHWC", "HWIO", "NHWC")


def _grads(fn, x, w, g):
  """(y, dx, dw) of fn(x, w) under jit, for the output cotangent g."""
  def run(x, w, g):
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(g))
  return jax.jit(run)(x, w, g)


# (N, H, W, C_in, C_out, kernel, strides, padding): odd and even sizes with stride 2 (the
# transposed convolution then pads one side by a different amount), asymmetric padding,
# a 7x7 stem, 1x1 downsampling, and shapes on either side of the flip-placement rule:
# small kernels with large activations flip the kernel, large kernels with small
# activations (ResNet-18's last stage) flip the activations.
CASES = [
    (2, 9, 9, 3, 8, (7, 7), (2, 2), ((3, 3), (3, 3))),
    (2, 8, 8, 4, 6, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 8, 7, 4, 6, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (2, 7, 7, 4, 6, (1, 1), (2, 2), ((0, 0), (0, 0))),
    (2, 6, 5, 3, 5, (3, 2), (1, 2), ((2, 0), (0, 1))),
    (2, 4, 4, 64, 64, (3, 3), (1, 1), ((1, 1), (1, 1))),
    (2, 7, 7, 32, 64, (3, 3), (2, 2), ((1, 1), (1, 1))),
    (1, 3, 3, 48, 40, (3, 3), (1, 1), ((0, 2), (2, 0))),
]


@pytest.mark.parametrize("n,h,w,ci,co,k,s,p", CASES)
def test_gradients_match_autodiff(n, h, w, ci, co, k, s, p):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(h * 100 + ci), 3)
  x = jax.random.normal(kx, (n, h, w, ci))
  wt = jax.random.normal(kw, k + (ci, co)) / np.sqrt(ci * k[0] * k[1])
  y_ref = jax.lax.conv_general_dilated(x, wt, s, p, dimension_numbers=DN)
  g = jax.random.normal(kg, y_ref.shape)
  want = _grads(lambda x, w: jax.lax.conv_general_dilated(x, w, s, p, dimension_numbers=DN),
                x, wt, g)
  got = _grads(lambda x, w: conv.conv2d(x, w, s, p), x, wt, g)
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))   # same forward op
  for name, a, b in zip(("dx", "dw"), got[1:], want[1:]):
    assert a.shape == b.shape and a.dtype == b.dtype, name
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-5 * float(np.abs(np.asarray(b)).max()), err_msg=name)


def test_both_flip_placements_are_exercised():
  """The rule of input_grad takes each branch in CASES (else a branch could go untested)."""
  flips_kernel = []
  for n, h, w, ci, co, k, s, p in CASES:
    if k == (1, 1):
      continue
    out = [(d + p[i][0] + p[i][1] - k[i]) // s[i] + 1 for i, d in enumerate((h, w))]
    acts = n * out[0] * out[1] * co + n * h * w * ci
    flips_kernel.append(k[0] * k[1] * ci * co <= acts)
  assert any(flips_kernel) and not all(flips_kernel)


def test_hand_computed_input_gradient():
  """1-channel 3x1 image, kernel (a, b) over rows, stride 1, padding (0, 1): y0 = a x0 + b x1,
  y1 = a x1 + b x2, y2 = a x2 (+ b * 0). With output gradient (g0, g1, g2):
  dx0 = a g0, dx1 = b g0 + a g1, dx2 = b g1 + a g2."""
  a, b = 2.0, -3.0
  x = jnp.array([1.0, 4.0, -1.0]).reshape(1, 3, 1, 1)
  w = jnp.array([a, b]).reshape(2, 1, 1, 1)
  g = jnp.array([1.0, 10.0, 100.0]).reshape(1, 3, 1, 1)
  _, dx, dw = _grads(lambda x, w: conv.conv2d(x, w, (1, 1), ((0, 1), (0, 0))), x, w, g)
  np.testing.assert_allclose(np.asarray(dx).ravel(), [a * 1, b * 1 + a * 10, b * 10 + a * 100])
  # dw_a = sum_i g_i x_i, dw_b = sum_i g_i x_{i+1} (x3 = 0).
  np.testing.assert_allclose(np.asarray(dw).ravel(), [1 * 1 + 10 * 4 + 100 * -1, 1 * 4 + 10 * -1])


def test_flipped_activations_branch_by_hand():
  """A 1x1 image with a 3x3 kernel of many channels takes the activation-flip branch; with
  padding 1, the only tap that meets the image is the centre, so dx = g @ w[1, 1].T."""
  ci, co = 8, 16
  w = jax.random.normal(jax.random.PRNGKey(0), (3, 3, ci, co))
  g = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, co))
  assert w.size > g.size + ci    # the rule's activation-flip side
  dx = conv.input_grad(g, w, (1, 1), (1, 1), ((1, 1), (1, 1)))
  np.testing.assert_allclose(np.asarray(dx)[0, 0, 0], np.asarray(w[1, 1] @ g[0, 0, 0]),
                             rtol=1e-6, atol=1e-6)


def test_module_is_flax_conv_with_same_parameters():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 10, 10, 3))
  for kwargs in (dict(features=8, kernel_size=(3, 3)),
                 dict(features=4, kernel_size=(7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                      use_bias=False),
                 dict(features=5, kernel_size=(1, 1), strides=2, padding="VALID"),
                 dict(features=6, kernel_size=(3, 3), padding=1, dtype=jnp.bfloat16)):
    ours, theirs = conv.Conv(**kwargs), nn.Conv(**kwargs)
    v_ours = ours.init(jax.random.PRNGKey(1), x)
    v_theirs = theirs.init(jax.random.PRNGKey(1), x)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_theirs)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    y_ours, y_theirs = ours.apply(v_ours, x), theirs.apply(v_theirs, x)
    assert y_ours.dtype == y_theirs.dtype, kwargs
    np.testing.assert_array_equal(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32))


def test_bfloat16_gradients_keep_dtypes():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 8), jnp.bfloat16)
  w = (jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 4)) / 8).astype(jnp.bfloat16)
  g = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)),
                                                    dimension_numbers=DN)
  want = _grads(plain, x, w, g)
  got = _grads(lambda x, w: conv.conv2d(x, w, (2, 2), ((1, 1), (1, 1))), x, w, g)
  for a, b in zip(got, want):
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backbone,size", [("small_cnn", 40), ("resnet18", 64)])
def test_network_gradients_match_flax_conv(backbone, size):
  """Whole networks, jitted, with either convolution: same parameters, loss and gradients
  to float32 rounding (relative to each leaf's scale)."""
  from conftest import network_gradients
  from ssfer_jax.config import base_config
  cfg = base_config().model
  cfg.backbone, cfg.head_dropout = backbone, 0.0
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, size, size, 3))
  y = jax.random.randint(jax.random.PRNGKey(1), (4,), 0, 7)
  out = {}
  for impl in ("fast", "flax"):
    cfg.conv = impl
    out[impl] = network_gradients(cfg, x, y)
  assert jax.tree.structure(out["fast"]) == jax.tree.structure(out["flax"])
  flat_fast = jax.tree_util.tree_leaves_with_path(out["fast"])
  for (path, a), b in zip(flat_fast, jax.tree.leaves(out["flax"])):
    scale = float(np.abs(np.asarray(b)).max())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_resolve_and_bad_value():
  assert conv.resolve("auto") == ("fast" if jax.default_backend() == "cpu" else "flax")
  assert conv.module("flax") is nn.Conv and conv.module("fast") is conv.Conv
  from ssfer_jax.config import base_config
  from ssfer_jax.models import build_model
  cfg = base_config().model
  cfg.conv = "cudnn"
  with pytest.raises(ValueError, match=r"config.model.conv='cudnn' is not one of"):
    build_model(cfg, 7)
  from conftest import tiny_config
  from ssfer_jax.config import validate
  with pytest.raises(ValueError, match=r"config.model.conv='cudnn' is not valid: use one "
                     r"of 'auto', 'fast', 'flax'"):
    validate(tiny_config("fixmatch", **{"model.conv": "cudnn"}))
