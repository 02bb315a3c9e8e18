"""2-D convolution whose input gradient XLA:CPU computes without its slowest transpose.

The gradient of a convolution with respect to its input is a convolution of the output
gradient with the kernel flipped in space and with its input and output channels swapped.
XLA's autodiff writes that kernel as ``transpose(reverse(w))``, and XLA:CPU fuses the two
into one element-by-element loop: for ResNet-18's 3x3x512x512 kernels it took 3-11 ms per
layer in the train step's profile, against 0.8 ms for the swap alone
(``docs/performance.md``, convolution section). Flipping a tensor in space copies whole
channel rows, which is cheap; it is the flip fused with the swap that is slow.

``Conv`` here is a drop-in for ``flax.linen.Conv`` as the backbones use it (2-D, NHWC,
no dilation, one feature group): the same parameters (``kernel`` of shape
``kernel_size + (in_features, features)``, ``bias``), initialised from the same random
stream, and the same forward operation (``lax.conv_general_dilated``), so the forward
pass is bit-identical. Its custom VJP computes the input gradient with the swap alone and
puts the spatial flip on whichever is smaller:
- the kernel (``w[::-1, ::-1]``), when it holds no more values than the output gradient
  and the input together (early layers: large images, few channels), which is XLA's own
  form;
- otherwise the activations: ``flip(conv(flip(g), swap(w)))`` with the padding mirrored,
  the same sum (deep layers: small images, 512 x 512 kernels).
The kernel gradient is XLA's own (``jax.linear_transpose`` of the forward convolution).
Values agree with XLA's autodiff to float rounding (``tests/test_conv.py``): the
convolution library may add the products in another order.

``impl`` (``config.model.conv``): ``'fast'`` is this module, ``'flax'`` is
``flax.linen.Conv`` itself, and ``'auto'`` takes ``'fast'`` on CPU and ``'flax'`` on GPU/TPU,
where XLA hands the input gradient to cuDNN or its own emitters by recognising autodiff's
form, and this module was not measured.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ssfer_jax import reductions

IMPLS = ("auto", "fast", "flax")
_DN = ("NHWC", "HWIO", "NHWC")


def resolve(impl: str) -> str:
  """'auto' -> 'fast' on CPU, 'flax' elsewhere; other values are returned as given."""
  if impl not in IMPLS:
    raise ValueError(f"config.model.conv={impl!r} is not one of {IMPLS}")
  if impl == "auto":
    return "fast" if reductions.on_cpu() else "flax"
  return impl


def _conv(x, w, strides, padding):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, strides, padding):
  """``lax.conv_general_dilated`` (NHWC, HWIO) with the input gradient described above.
  ``strides``: (sh, sw); ``padding``: ((lo, hi), (lo, hi))."""
  return _conv(x, w, strides, padding)


def _fwd(x, w, strides, padding):
  return _conv(x, w, strides, padding), (x, w)


def input_grad(g, w, in_hw, strides, padding):
  """d loss / d x of ``_conv(x, w, strides, padding)`` for an input of spatial size
  ``in_hw``, given the output gradient ``g``: the transposed convolution, with the kernel's
  spatial flip put where it copies less (module docstring)."""
  pads = []
  for d in range(2):
    k = w.shape[d]
    before = k - 1 - padding[d][0]
    after = in_hw[d] + k - 1 - before - ((g.shape[1 + d] - 1) * strides[d] + 1)
    pads.append((before, after))
  swapped = jnp.swapaxes(w, 2, 3)
  activations = g.size + g.shape[0] * in_hw[0] * in_hw[1] * w.shape[2]
  if w.shape[0] * w.shape[1] == 1 or w.size <= activations:
    return lax.conv_general_dilated(g, swapped[::-1, ::-1], (1, 1), pads, lhs_dilation=strides,
                                    dimension_numbers=_DN)
  # conv(g, flip(k)) = flip(conv(flip(g), k)) once the padding is mirrored: the flip of the
  # stride-dilated g is the stride-dilated flip of g.
  mirrored = [(after, before) for before, after in pads]
  y = lax.conv_general_dilated(g[:, ::-1, ::-1], swapped, (1, 1), mirrored,
                               lhs_dilation=strides, dimension_numbers=_DN)
  return y[:, ::-1, ::-1]


def _bwd(strides, padding, res, g):
  x, w = res
  dx = input_grad(g, w, x.shape[1:3], strides, padding)
  dw, = jax.linear_transpose(lambda w_: _conv(x, w_, strides, padding), w)(g)
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv2d.defvjp(_fwd, _bwd)


def _pairs(padding, x_hw, kernel_size, strides):
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(x_hw, kernel_size, strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)


class Conv(nn.Module):
  """``flax.linen.Conv`` for 2-D NHWC inputs with the input gradient above."""
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] | int = 1
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.linear.default_kernel_init
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4:
      raise ValueError(f"models.conv.Conv takes NHWC inputs; got shape {x.shape}")
    kernel_size = tuple(self.kernel_size)
    strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    kernel = self.param("kernel", self.kernel_init, kernel_size + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, strides, _pairs(self.padding, x.shape[1:3], kernel_size, strides))
    return y if bias is None else y + bias


def module(impl: str):
  """The Conv class for ``config.model.conv`` (resolved: 'fast' | 'flax')."""
  return {"fast": Conv, "flax": nn.Conv}[resolve(impl)]
