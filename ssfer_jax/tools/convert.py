"""PyTorch ResNet checkpoints -> Flax backbone variables (``ssfer_jax/models/resnet.py``).

    python -m ssfer_jax.tools.convert --input=model.pth --output=DIR --arch=resnet18

Input: a torchvision-layout ResNet ``state_dict`` (``conv1.weight``, ``bn1.*``,
``layer{i}.{j}.conv{k}.weight``, ``layer{i}.{j}.bn{k}.*``, ``layer{i}.{j}.downsample.{0,1}.*``),
either as the file's top object or held under ``state_dict`` / ``model`` /
``model_state_dict`` / ``net``, with or without a ``module.`` (DataParallel) prefix or
any other common prefix before ``conv1.weight`` (e.g. ``backbone.``, ``encoder.``).
The classifier (``fc.*``) is ignored whether present or not: the FER head
(pool -> dropout -> L2-normalise -> linear) is trained from scratch.
BatchNorm's ``num_batches_tracked`` is ignored.

Mapping: conv kernels OIHW -> HWIO; BN ``weight``/``bias`` -> params ``scale``/``bias``,
``running_mean``/``running_var`` -> batch_stats ``mean``/``var`` (both use eps 1e-5);
``layer{i}.{j}`` -> ``layer{i}_{j}``; ``downsample.0`` / ``downsample.1`` ->
``downsample_conv`` / ``downsample_bn``.

Output: ``DIR/backbone.msgpack`` + ``DIR/backbone.json`` (format in
``ssfer_jax/models/pretrained.py``). Train from it with ``config.init_from=DIR`` and
``config.model.backbone`` set to the same architecture. A pretrained network is best
fed the normalisation it was trained with: set ``config.data.mean`` / ``config.data.std``
accordingly (torchvision ImageNet: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)).

Loading a pickle can run code; by default the file is read with
``torch.load(weights_only=True)``. ``--trust_pickle`` lifts that for files you trust
that hold other Python objects (e.g. an argparse Namespace next to the weights).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from etils import epath
from flax import traverse_util

from ssfer_jax import cli
from ssfer_jax.models import pretrained
from ssfer_jax.models.resnet import ResNet18, ResNet50

ARCHS = {"resnet18": ResNet18, "resnet50": ResNet50}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "state")
IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^fc\.(weight|bias)$")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias",
                  "mean": "running_mean", "var": "running_var"}


def backbone_shapes(arch: str) -> tuple[dict, dict]:
  """Flat {"a/b/leaf": shape} for the params and batch_stats of the Flax backbone ``arch``."""
  if arch not in ARCHS:
    raise ValueError(f"--arch must be one of {sorted(ARCHS)}, got {arch!r}")
  model = ARCHS[arch]()
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                                train=False))
  flat = lambda t: {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(t, sep="/").items()}
  return flat(variables["params"]), flat(variables["batch_stats"])


def torch_key(flax_path: str) -> str:
  """'layer2_0/downsample_bn/scale' -> 'layer2.0.downsample.1.weight' (and so on)."""
  *modules, leaf = flax_path.split("/")
  parts = []
  for m in modules:
    block = re.fullmatch(r"layer(\d+)_(\d+)", m)
    if block:
      parts += [f"layer{block[1]}", block[2]]
    elif m == "downsample_conv":
      parts += ["downsample", "0"]
    elif m == "downsample_bn":
      parts += ["downsample", "1"]
    else:
      parts.append(m)
  return ".".join(parts + [_LEAF_TO_TORCH[leaf]])


def to_flax_layout(flax_path: str, value: np.ndarray) -> np.ndarray:
  """Conv kernels OIHW -> HWIO; everything else unchanged."""
  if flax_path.endswith("/kernel"):
    return np.transpose(value, (2, 3, 1, 0))
  return value


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, np.ndarray]:
  """The ResNet tensors of a loaded checkpoint as {torchvision key: float32 numpy array}.

  Unwraps ``state_dict``-style containers, strips ``module.`` prefixes and any common
  prefix found before the stem's ``conv1.weight``.
  """
  for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
    if isinstance(obj, Mapping) and not any(_is_tensor(v) for v in obj.values()):
      inner = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
      if not inner:
        break
      obj = obj[inner[0]]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{source}: expected a state_dict (a dict of tensors), "
                     f"got {type(obj).__name__}")
  tensors = {}
  for k, v in obj.items():
    if _is_tensor(v):
      key = str(k)
      while key.startswith("module."):
        key = key[len("module."):]
      tensors[key] = _to_numpy(v)
  if not tensors:
    raise ValueError(f"{source}: no tensors found; top-level keys are {sorted(map(str, obj))[:20]} "
                     f"(looked inside {list(WRAPPER_KEYS)})")
  stems = [k[:-len("conv1.weight")] for k in tensors
           if k.endswith("conv1.weight") and "layer" not in k and np.ndim(tensors[k]) == 4]
  if len(stems) == 1 and stems[0]:
    prefix = stems[0]
    tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
  return tensors


def guess_arch(keys) -> str:
  """A human-readable guess of a torchvision ResNet from its keys (for error messages)."""
  blocks = []
  for i in range(1, 5):
    ids = {int(m[1]) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
    blocks.append(max(ids) + 1 if ids else 0)
  if not any(blocks):
    return "not a torchvision ResNet (no layer1..layer4 keys)"
  bottleneck = any(re.match(r"layer\d+\.\d+\.conv3\.", k) for k in keys)
  known = {((2, 2, 2, 2), False): "resnet18", ((3, 4, 6, 3), False): "resnet34",
           ((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101",
           ((3, 8, 36, 3), True): "resnet152"}
  name = known.get((tuple(blocks), bottleneck), "an unknown ResNet")
  kind = "Bottleneck" if bottleneck else "BasicBlock"
  return f"{name} ({kind} blocks {tuple(blocks)})"


def convert_state_dict(state_dict: Mapping[str, np.ndarray], arch: str, *,
                       source: str = "checkpoint", allow_extra: bool = False):
  """torchvision keys -> (params, batch_stats, report) for the Flax backbone ``arch``.

  Raises ValueError naming missing / unexpected keys and shape mismatches (in the
  checkpoint's own key names and OIHW shapes). ``allow_extra`` tolerates keys that map
  to nothing (they are listed in ``report['ignored_keys']``).
  """
  param_shapes, stat_shapes = backbone_shapes(arch)
  expected = {}  # torch key -> (collection, flax path, torch-layout shape)
  for collection, shapes in (("params", param_shapes), ("batch_stats", stat_shapes)):
    for path, shape in shapes.items():
      torch_shape = (shape[3], shape[2], shape[0], shape[1]) if path.endswith("/kernel") else shape
      expected[torch_key(path)] = (collection, path, torch_shape)
  ignored = sorted(k for k in state_dict if IGNORED.search(k))
  used = {k: v for k, v in state_dict.items() if k not in ignored}
  missing = sorted(set(expected) - set(used))
  extra = sorted(set(used) - set(expected))
  mismatched = [f"{k}: checkpoint {tuple(np.shape(used[k]))} vs {arch} {expected[k][2]}"
                for k in sorted(set(expected) & set(used))
                if tuple(np.shape(used[k])) != expected[k][2]]
  if missing or mismatched or (extra and not allow_extra):
    raise ValueError(
        f"{source}: does not fit --arch={arch}. "
        + pretrained._listing("missing keys", missing)
        + (pretrained._listing("unexpected keys", extra) if not allow_extra else "")
        + pretrained._listing("shape mismatches", mismatched)
        + f"The checkpoint looks like {guess_arch(used)}; pass the matching --arch "
        f"(supported: {sorted(ARCHS)})"
        + ("" if missing or mismatched else ", or --allow_extra to ignore the unexpected keys"))
  flat = {"params": {}, "batch_stats": {}}
  for key, (collection, path, _) in expected.items():
    flat[collection][path] = to_flax_layout(path, np.asarray(used[key], np.float32))
  params = traverse_util.unflatten_dict(flat["params"], sep="/")
  batch_stats = traverse_util.unflatten_dict(flat["batch_stats"], sep="/")
  report = {"arch": arch, "num_converted": len(expected), "ignored_keys": ignored + extra}
  return params, batch_stats, report


def load_torch_file(path, *, trust_pickle: bool = False):
  """``torch.load`` on CPU; weights-only unless ``trust_pickle``."""
  try:
    import torch
  except ImportError as e:
    raise ImportError("converting a PyTorch checkpoint needs PyTorch: "
                      "pip install 'ssfer_jax[torch]' (torch==2.13.0)") from e
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"--input={path}: no such file")
  with path.open("rb") as f:
    try:
      return torch.load(f, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:
      if trust_pickle:
        raise ValueError(f"--input={path}: torch.load failed: {e}") from e
      raise ValueError(
          f"--input={path}: could not be read as weights only ({type(e).__name__}: "
          f"{str(e).splitlines()[0] if str(e) else ''}). If the file holds other Python objects "
          "and you trust it, re-run with --trust_pickle") from e


def convert_file(input_path, output_dir, arch: str, *, trust_pickle: bool = False,
                 allow_extra: bool = False) -> dict:
  """Reads ``input_path``, converts, writes ``output_dir``; returns the metadata written."""
  source = str(input_path)
  obj = load_torch_file(input_path, trust_pickle=trust_pickle)
  state_dict = extract_state_dict(obj, source)
  params, batch_stats, report = convert_state_dict(state_dict, arch, source=source,
                                                   allow_extra=allow_extra)
  meta = {"arch": arch, "source": source,
          "source_sha256": hashlib.sha256(epath.Path(input_path).read_bytes()).hexdigest(),
          "num_converted": report["num_converted"], "ignored_keys": report["ignored_keys"]}
  pretrained.write(output_dir, params, batch_stats, meta)
  return meta


def _is_tensor(v) -> bool:
  return hasattr(v, "detach") and hasattr(v, "shape") or isinstance(v, np.ndarray)


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):
    return v.detach().to("cpu").float().numpy()
  return np.asarray(v, np.float32)


FLAGS = flags.FlagValues()  # this tool's own flags: main() runs in-process next to the others
_INPUT = flags.DEFINE_string("input", None, "PyTorch checkpoint (.pth / .pt / .tar)",
                             required=True, flag_values=FLAGS)
_OUTPUT = flags.DEFINE_string("output", None, "directory to write (config.init_from)",
                              required=True, flag_values=FLAGS)
_ARCH = flags.DEFINE_enum("arch", None, sorted(ARCHS), "the backbone the weights are for",
                          required=True, flag_values=FLAGS)
_TRUST_PICKLE = flags.DEFINE_bool("trust_pickle", False,
                                  "allow arbitrary pickled objects (only for files you trust)",
                                  flag_values=FLAGS)
_ALLOW_EXTRA = flags.DEFINE_bool("allow_extra", False,
                                 "ignore checkpoint keys that map to nothing in the backbone",
                                 flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.convert", __doc__)
  meta = convert_file(_INPUT.value, _OUTPUT.value, _ARCH.value, trust_pickle=_TRUST_PICKLE.value,
                      allow_extra=_ALLOW_EXTRA.value)
  ignored = meta["ignored_keys"]
  print(f"converted {meta['num_converted']} tensors of {_ARCH.value} from {_INPUT.value} -> "
        f"{_OUTPUT.value}/{pretrained.WEIGHTS_FILE}"
        + (f" (ignored {len(ignored)}: {', '.join(ignored[:6])}"
           f"{' ...' if len(ignored) > 6 else ''})" if ignored else ""))
  print(f"train from it with: --config.init_from={_OUTPUT.value} "
        f"--config.model.backbone={_ARCH.value}")
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(main())
