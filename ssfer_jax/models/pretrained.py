"""Converted pretrained backbones: the on-disk format, and loading into a model's variables.

Format (written by ``python -m ssfer_jax.tools.convert``; needs only jax/flax to read)::

    DIR/backbone.msgpack   flax.serialization msgpack of
                           {"params": {...}, "batch_stats": {...}}, float32 numpy leaves,
                           laid out exactly like the ``backbone`` subtree of the FERNet
                           (conv1, bn1, layer{i}_{j}/conv{k}, bn{k}, downsample_conv,
                           downsample_bn; conv kernels HWIO; BN scale/bias, mean/var)
    DIR/backbone.json      {"format": "ssfer_jax.backbone/1", "arch": "resnet18", "source": ...,
                           "source_sha256": ..., "num_converted": ..., "ignored_keys": [...]}

``config.init_from`` may name DIR or the ``.msgpack`` file itself (local path or any
``etils.epath`` URL such as ``gs://``). The trainer calls :func:`load_into` on the
freshly initialised student variables and copies the result to the teacher.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import jax
import numpy as np
from etils import epath
from flax import serialization, traverse_util

FORMAT = "ssfer_jax.backbone/1"
WEIGHTS_FILE = "backbone.msgpack"
META_FILE = "backbone.json"
BACKBONE = "backbone"


def write(out_dir, params: Mapping, batch_stats: Mapping, meta: Mapping) -> epath.Path:
  """Writes a converted backbone to ``out_dir`` (created if needed); returns the directory."""
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  tree = {"params": _to_numpy(params), "batch_stats": _to_numpy(batch_stats)}
  (out / WEIGHTS_FILE).write_bytes(serialization.msgpack_serialize(tree))
  (out / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=2) + "\n")
  return out


def read(path) -> tuple[dict, dict, dict]:
  """``path``: a directory written by :func:`write`, or its ``backbone.msgpack``.

  Returns (params, batch_stats, meta); meta is {} when the JSON file is absent.
  """
  path = epath.Path(path)
  weights = path / WEIGHTS_FILE if path.is_dir() else path
  if not weights.exists():
    raise FileNotFoundError(
        f"{weights}: no converted backbone here. Create one with "
        "`python -m ssfer_jax.tools.convert --input=model.pth --output=DIR --arch=resnet18` and set "
        "config.init_from=DIR")
  try:
    tree = serialization.msgpack_restore(weights.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise ValueError(f"{weights}: not a converted backbone (msgpack could not be read: {e}). "
                     "Create one with `python -m ssfer_jax.tools.convert`") from e
  if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
    keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
    raise ValueError(f"{weights}: expected top-level keys ['batch_stats', 'params'], got {keys}")
  meta_file = weights.parent / META_FILE
  meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
  if meta and meta.get("format") != FORMAT:
    raise ValueError(f"{meta_file}: format {meta.get('format')!r}, expected {FORMAT!r}")
  return tree["params"], tree["batch_stats"], meta


def load_into(params: Mapping, batch_stats: Mapping, path, *, subtree: str = BACKBONE):
  """Replaces ``params[subtree]`` and ``batch_stats[subtree]`` with the converted backbone.

  Every leaf must exist on both sides with the same shape (except an RGB stem loaded
  into a 1-channel model: its kernel is summed over the input channels), else a
  ValueError lists the
  missing / unexpected paths and shape mismatches. New leaves take the dtype of the
  leaves they replace and, for ``jax.Array`` leaves, their sharding. Inputs are not
  modified; returns (params, batch_stats) as plain dicts.
  """
  new_params, new_stats, meta = read(path)
  arch = meta.get("arch", "?")
  if subtree not in params:
    raise ValueError(f"config.init_from={str(path)!r} holds a {arch} backbone, but the model "
                     f"has no '{subtree}' parameters (top-level: {sorted(params)})")
  where = f"config.init_from={str(path)!r} ({arch})"
  out_params = _replace(params, subtree, new_params, where, "params")
  out_stats = _replace(batch_stats, subtree, new_stats, where, "batch_stats")
  return out_params, out_stats


def _replace(tree: Mapping, subtree: str, new: Mapping, where: str, collection: str) -> dict:
  old_flat = traverse_util.flatten_dict(_plain(tree.get(subtree, {})), sep="/")
  new_flat = traverse_util.flatten_dict(_plain(new), sep="/")
  new_flat = _grey_stem(old_flat, new_flat)
  check_same_layout(old_flat, new_flat, where=where, collection=collection,
                    hint="set config.model.backbone to the converted architecture")
  placed = {k: _like(np.asarray(new_flat[k]), old) for k, old in old_flat.items()}
  out = dict(_plain(tree))
  out[subtree] = traverse_util.unflatten_dict(placed, sep="/")
  return out


def _grey_stem(old_flat: Mapping, new_flat: dict) -> dict:
  """An RGB stem into a grey-input model (FER2013 / FERPlus are stored with 1 channel):
  the stem kernel is summed over its input channels, which is exact for grey images
  replicated to RGB when config.data.mean / std are equal across channels."""
  key = "conv1/kernel"
  if key in old_flat and key in new_flat:
    old, new = tuple(np.shape(old_flat[key])), np.shape(new_flat[key])
    if len(new) == 4 and old == new[:2] + (1,) + new[3:] and new[2] == 3:
      new_flat = dict(new_flat)
      new_flat[key] = np.asarray(new_flat[key]).sum(axis=2, keepdims=True)
  return new_flat


def check_same_layout(expected: Mapping[str, Any], got: Mapping[str, Any], *, where: str,
                      collection: str, hint: str) -> None:
  """Raises a ValueError naming missing / unexpected keys and shape mismatches."""
  missing = sorted(set(expected) - set(got))
  extra = sorted(set(got) - set(expected))
  shapes = [f"{k}: file {tuple(np.shape(got[k]))} vs model {tuple(np.shape(expected[k]))}"
            for k in sorted(set(expected) & set(got))
            if tuple(np.shape(got[k])) != tuple(np.shape(expected[k]))]
  if missing or extra or shapes:
    raise ValueError(
        f"{where}: the {collection} do not match the model's backbone. "
        + _listing("missing", missing) + _listing("unexpected", extra)
        + _listing("shape mismatches", shapes) + hint)


def _listing(what: str, items, limit: int = 8) -> str:
  if not items:
    return ""
  more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
  return f"{what} ({len(items)}): {', '.join(items[:limit])}{more}; "


def _plain(tree) -> dict:
  """FrozenDict / nested Mapping -> nested dict."""
  if isinstance(tree, Mapping):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def _to_numpy(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float32), _plain(tree))


def _like(value: np.ndarray, old):
  dtype = getattr(old, "dtype", np.float32)
  if isinstance(old, jax.Array):
    return jax.device_put(value.astype(dtype), old.sharding)
  return value.astype(dtype)
