"""How an image becomes the network's input: the one rule used by training, evaluation,
prediction and export, so a model is fed the same way everywhere.

Decoding (PIL, ``pil_to_mode``): a file's pixels as RGB or grey, the same for the dataset
builders and for photos given to ``predict`` (16-bit grey scaled, transparency on white).

On the host (numpy, uint8), ``fit``:

* colour: RGB -> grey by ITU-R 601 luma, exactly as PIL's ``convert("L")`` (integer
  ``(19595 R + 38470 G + 7471 B + 32768) >> 16``); grey -> RGB by repeating the grey
  value in the three channels;
* size: bilinear resize (PIL ``Image.BILINEAR``) to ``size x size``.

Grey conversion happens before the resize and repetition after it, so the resize runs on
the fewer channels. Repetition commutes exactly with PIL's per-channel resize, so the
order only matters for luma, and there it is fixed here: an exported model's user who
opens a file with ``convert("L")`` and then resizes (``export.py``'s loader) gets the same
pixels. Images stay uint8 until the device normalises them (``normalize``, inside the
jitted train / eval / predict / exported functions).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def pil_to_mode(img: Image.Image, mode: str) -> Image.Image:
  """A decoded image as ``mode`` ('RGB' or 'L'), as datasets are prepared and photos
  predicted: 16- / 32-bit grey scaled to 8 bits, transparency composited onto white,
  then PIL's ``convert`` (luma for 'L')."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    arr = np.asarray(img, np.float64)
    hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
    img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(bg, img)
  return img.convert(mode)


def as_hwc(img) -> np.ndarray:
  """uint8 (H, W), (H, W, 1) or (H, W, 3) -> (H, W, C) with C in (1, 3)."""
  img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f"an image of shape {img.shape}: expected (H, W) or (H, W, 1) grey, "
                     "or (H, W, 3) RGB")
  return img


def to_grey(img) -> np.ndarray:
  """(H, W, C) uint8 -> (H, W, 1): RGB by ITU-R 601 luma (PIL 'L'); grey unchanged."""
  img = as_hwc(img)
  if img.shape[-1] == 1:
    return img
  return np.asarray(Image.fromarray(np.ascontiguousarray(img), "RGB").convert("L"))[..., None]


def to_channels(img, channels: int) -> np.ndarray:
  """(H, W, C) uint8 -> (H, W, channels): grey by luma (``to_grey``), RGB by repetition."""
  img = as_hwc(img)
  if channels == 1:
    return to_grey(img)
  if channels != 3:
    raise ValueError(f"images are fed with 1 (grey) or 3 (RGB) channels, not {channels}")
  return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img


def resize(img, size: int) -> np.ndarray:
  """(H, W, C) uint8 -> (size, size, C), bilinear (PIL); unchanged when already that size."""
  img = as_hwc(img)
  if img.shape[0] == size and img.shape[1] == size:
    return img
  pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if out.ndim == 2 else out


def fit(img, size: int, channels: int = 3) -> np.ndarray:
  """uint8 (H, W[, C]) -> (size, size, channels): the host half of feeding the network."""
  img = as_hwc(img)
  if channels == 1:
    img = to_grey(img)
  return to_channels(resize(img, size), channels)


def channel_stats(values, channels: int):
  """``config.data.mean``/``std`` for images with ``channels`` channels: per-channel values
  as given, or for 1-channel (grey) images with RGB statistics, their average."""
  values = tuple(float(v) for v in values)
  if len(values) in (1, channels):
    return values
  if channels == 1:
    return (sum(values) / len(values),)
  raise ValueError(f"config.data.mean/std have {len(values)} values but the images have "
                   f"{channels} channels; give 1 or {channels} values")


def normalize(x, mean, std):
  """uint8 images -> float32, (x/255 - mean) / std with per-channel statistics. The device
  half of feeding the network: called inside the jitted step, prediction and export."""
  import jax.numpy as jnp  # here, so the dataset builders (decoding only) need no jax
  x = x.astype(jnp.float32) / 255.0
  mean = jnp.asarray(channel_stats(mean, x.shape[-1]), jnp.float32)
  std = jnp.asarray(channel_stats(std, x.shape[-1]), jnp.float32)
  return (x - mean) / std
