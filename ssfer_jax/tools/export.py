"""Export a trained run for inference without the training code (``jax.export``).

    python -m ssfer_jax.tools.export --workdir=RUN --output=DIR [--weights=teacher] [--step=N]
                                     [--member=K (a population run)]

Writes three files (plus a README.md repeating this description):

``DIR/model.jaxexport``
    ``jax.export.Exported.serialize()`` of the jitted function
    ``f(leaves, images) -> probabilities``: ``leaves`` is the list of parameter arrays
    in the order ``model.json["param_names"]``; ``images`` is uint8 ``(b, H, W, C)``
    (RGB, or grey when C = 1) with a symbolic batch ``b``, already resized to
    ``image_size`` as training does (``ssfer_jax/data/images.py``: grey by ITU-R 601
    luma, PIL's ``convert("L")``, then bilinear resize, as in the loader below); the
    function normalises ``(x / 255 - mean) / std``, runs the network in inference mode
    (BatchNorm running statistics, no dropout) and returns the float32 softmax
    ``(b, num_classes)``. Lowered for the platforms in ``model.json["platforms"]``
    (default cpu, cuda and tpu).
``DIR/params.npz``
    The arrays, one per name ``"params/backbone/conv1/kernel"``, ``"batch_stats/..."``.
``DIR/model.json``
    ``{"format": "ssfer_jax.export/1", "class_names": [...], "image_size": 112,
    "channels": 3, "mean": [...], "std": [...], "param_names": [...], "platforms": [...],
    "input": ..., "output": ..., "source": {"checkpoint", "step", "weights", "member"}}``
    (``member``: the member of a population run, else null).

A loader needing only jax and numpy (the exported StableHLO does not need Flax or this
package)::

    import json, numpy as np
    from jax import export
    from PIL import Image                          # or any image reader
    d = "DIR"
    meta = json.load(open(f"{d}/model.json"))
    params = np.load(f"{d}/params.npz")
    leaves = [params[k] for k in meta["param_names"]]
    predict = export.deserialize(bytearray(open(f"{d}/model.jaxexport", "rb").read()))
    img = Image.open("face.jpg").convert("RGB" if meta["channels"] == 3 else "L")
    x = np.asarray(img.resize((meta["image_size"],) * 2, Image.BILINEAR), np.uint8)
    probs = np.asarray(predict.call(leaves, x.reshape((1,) + x.shape[:2] + (meta["channels"],))))
    print(meta["class_names"][int(probs[0].argmax())], probs[0])

ONNX is not offered: the maintained JAX converter (jax2onnx 0.17) pins
orbax-checkpoint < 0.11.37, which conflicts with this project's orbax 0.12.8, and
tf2onnx needs TensorFlow.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from absl import logging as absl_logging
from etils import epath
from flax import traverse_util

from ssfer_jax import cli, inference

FORMAT = "ssfer_jax.export/1"
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def flat_variables(variables) -> dict[str, np.ndarray]:
  """{"params/a/b": array, "batch_stats/...": array}, in a fixed (sorted) order."""
  flat = traverse_util.flatten_dict(variables, sep="/")
  return {k: np.asarray(flat[k]) for k in sorted(flat)}


def inference_fn(run: inference.RunInfo, names):
  """(leaves in ``names`` order, uint8 images) -> probabilities; pure, for jax.export."""
  model, mean, std = run.model(), run.mean, run.std

  def fn(leaves, images):
    variables = traverse_util.unflatten_dict(dict(zip(names, leaves)), sep="/")
    return inference.probabilities(model, variables, images, mean, std)

  return fn


def export_run(run: inference.RunInfo, output, *, platforms=DEFAULT_PLATFORMS) -> dict:
  """Writes DIR/model.jaxexport, params.npz, model.json, README.md; returns the metadata."""
  flat = flat_variables(run.variables)
  names = list(flat)
  (batch,) = jax.export.symbolic_shape("b")
  image_spec = jax.ShapeDtypeStruct((batch, run.image_size, run.image_size, run.channels),
                                    jnp.uint8)
  leaf_specs = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in flat.values()]
  exported = jax.export.export(jax.jit(inference_fn(run, names)), platforms=tuple(platforms))(
      leaf_specs, image_spec)
  out = epath.Path(output)
  out.mkdir(parents=True, exist_ok=True)
  (out / "model.jaxexport").write_bytes(exported.serialize())
  with (out / "params.npz").open("wb") as f:
    np.savez(f, **flat)
  meta = {
      "format": FORMAT,
      "class_names": list(run.class_names),
      "image_size": run.image_size,
      "channels": run.channels,
      "mean": list(run.mean),
      "std": list(run.std),
      "input": f"uint8 (batch, {run.image_size}, {run.image_size}, {run.channels}), "
               "values 0..255, " + ("RGB" if run.channels == 3 else "grey"),
      "output": f"float32 (batch, {len(run.class_names)}) class probabilities (softmax)",
      "param_names": names,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "source": {"checkpoint": str(run.checkpoint_dir), "step": run.step, "weights": run.weights,
                 "member": run.member},
  }
  (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
  (out / "README.md").write_text("# Exported ssfer_jax model\n\n" + __doc__.split("\n\n", 1)[1])
  return meta


def load(directory):
  """(callable images -> probabilities, meta) from an export directory (jax + numpy only)."""
  d = epath.Path(directory)
  meta = json.loads((d / "model.json").read_text())
  with (d / "params.npz").open("rb") as f:
    params = np.load(f)
    leaves = [params[k] for k in meta["param_names"]]
  exported = jax.export.deserialize(bytearray((d / "model.jaxexport").read_bytes()))
  return (lambda images: exported.call(leaves, images)), meta


FLAGS = flags.FlagValues()  # this tool's own flags: main() runs in-process next to the others
_RUN = inference.RunFlags(FLAGS)
_OUTPUT = flags.DEFINE_string("output", None, "directory to write", required=True,
                              flag_values=FLAGS)
_PLATFORMS = flags.DEFINE_string("platforms", ",".join(DEFAULT_PLATFORMS),
                                 "comma-separated jax.export platforms (cpu, cuda, rocm, tpu)",
                                 flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.export", __doc__)
  absl_logging.set_verbosity(absl_logging.ERROR)
  run = _RUN.restore()
  meta = export_run(run, _OUTPUT.value, platforms=[p for p in _PLATFORMS.value.split(",") if p])
  member = "" if run.member is None else f" of member {run.member}"
  print(f"exported {run.weights} weights{member} of step {run.step} "
        f"({len(meta['param_names'])} arrays, "
        f"{meta['image_size']}px, {len(meta['class_names'])} classes, platforms "
        f"{','.join(meta['platforms'])}) to {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
