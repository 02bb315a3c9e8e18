"""Host-side augmentation on uint8 HxWxC numpy images, driven by a numpy Generator.

weak   : random crop after reflect-padding by ``pad`` pixels + horizontal flip (p = 0.5).
strong : weak, then RandAugment (``n`` ops drawn uniformly from ``RANDAUGMENT_OPS``,
         each at a random magnitude in [0, 1], as in the USB / Ada-CM code) and Cutout
         (one square of side up to ``cutout`` x size, filled with grey).

All functions are pure given the Generator, so grain's ``random_map`` makes them
deterministic per element and epoch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def weak(img: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
  h, w = img.shape[:2]
  if pad > 0:
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    top, left = rng.integers(0, 2 * pad + 1, size=2)
    img = padded[top:top + h, left:left + w]
  if rng.random() < 0.5:
    img = img[:, ::-1]
  return np.ascontiguousarray(img)


def _fill(img):
  return (128,) * len(img.getbands()) if len(img.getbands()) > 1 else 128


def _shear_x(img, v):
  return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0), fillcolor=_fill(img))


def _shear_y(img, v):
  return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0), fillcolor=_fill(img))


def _translate_x(img, v):
  return img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0), fillcolor=_fill(img))


def _translate_y(img, v):
  return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1]), fillcolor=_fill(img))


def _signed(rng, m):
  return m if rng.random() < 0.5 else -m


# name -> f(img, magnitude in [0,1], rng). Ranges follow the USB RandAugment table.
RANDAUGMENT_OPS = {
    "identity": lambda img, m, rng: img,
    "autocontrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, m, rng: ImageOps.equalize(img),
    "brightness": lambda img, m, rng: ImageEnhance.Brightness(img).enhance(0.05 + 0.9 * m),
    "color": lambda img, m, rng: ImageEnhance.Color(img).enhance(0.05 + 0.9 * m),
    "contrast": lambda img, m, rng: ImageEnhance.Contrast(img).enhance(0.05 + 0.9 * m),
    "sharpness": lambda img, m, rng: ImageEnhance.Sharpness(img).enhance(0.05 + 0.9 * m),
    "posterize": lambda img, m, rng: ImageOps.posterize(img, int(4 + 4 * m) if m < 1 else 8),
    "solarize": lambda img, m, rng: ImageOps.solarize(img, int(256 * m)),
    "rotate": lambda img, m, rng: img.rotate(_signed(rng, 30 * m), fillcolor=_fill(img)),
    "shear_x": lambda img, m, rng: _shear_x(img, _signed(rng, 0.3 * m)),
    "shear_y": lambda img, m, rng: _shear_y(img, _signed(rng, 0.3 * m)),
    "translate_x": lambda img, m, rng: _translate_x(img, _signed(rng, 0.3 * m)),
    "translate_y": lambda img, m, rng: _translate_y(img, _signed(rng, 0.3 * m)),
}
_OP_NAMES = tuple(RANDAUGMENT_OPS)


def cutout(img: np.ndarray, rng: np.random.Generator, max_frac: float) -> np.ndarray:
  h, w = img.shape[:2]
  side = int(rng.uniform(0, max_frac) * min(h, w))
  if side <= 0:
    return img
  cy, cx = rng.integers(0, h), rng.integers(0, w)
  out = img.copy()
  out[max(0, cy - side // 2):cy + (side + 1) // 2, max(0, cx - side // 2):cx + (side + 1) // 2] = 127
  return out


def randaugment(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
  gray = img.shape[-1] == 1
  pil = Image.fromarray(img[..., 0] if gray else img)
  for i in rng.choice(len(_OP_NAMES), size=n, replace=True):
    pil = RANDAUGMENT_OPS[_OP_NAMES[i]](pil, float(rng.random()), rng)
  out = np.asarray(pil, dtype=np.uint8)
  return out[..., None] if gray else out


def strong(img: np.ndarray, rng: np.random.Generator, pad: int, n: int, cutout_frac: float):
  return cutout(randaugment(weak(img, rng, pad), rng, n), rng, cutout_frac)
