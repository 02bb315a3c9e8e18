"""Predict the expression of face images with a trained run.

    python -m ssfer_jax.tools.predict --workdir=RUN [--detect_faces] [--out=preds.csv|preds.json] PATH...
    python -m ssfer_jax.tools.predict --checkpoint=RUN/checkpoints[/STEP] PATH...
    python -m ssfer_jax.tools.predict --workdir=POPULATION_RUN [--member=K] PATH...

PATH: image files or folders (searched recursively for .jpg .jpeg .png .bmp .gif .tif
.tiff .webp .pgm .ppm). For each image: the predicted expression (the run's class
names: the canonical order of ``ssfer_jax/data/classes.py`` for the standard datasets)
and the probability of every class, printed as a table; ``--out`` also writes them as
CSV (one row per file: path, prediction, confidence, p_<class>..., face box, error) or
JSON (a list of such records), chosen by the file's extension.

The run is restored (``ssfer_jax/inference.py``) from its orbax checkpoint (latest
step unless ``--step``) and its ``config.json`` (model, image size, normalisation). The
teacher (EMA) weights are used unless ``--weights=student``. Only the network's
variables are read, so neither the dataset nor the optimizer is needed. Of a population
run (``config.population.size`` > 1) member ``--member`` is used; without it, the best on
held-out validation or member 0 (a stderr line says which and why).

Images are fed like the training data (``data/images.py``): converted to the run's
channel count (grey by ITU-R 601 luma) and resized (bilinear) to its square image size.
Photos that are not pre-aligned face crops need ``--detect_faces`` (``faces.py``):
OpenCV's frontal-face Haar cascade finds the faces, the largest is cropped as a square
enlarged by ``--margin`` (default 0.1) of its side on every side (shifted or clipped to
stay inside the photo). A file that is not a readable image, or in which no face is found,
gets an error row; the other files are still processed.
Exit status: 0 all predicted, 3 some files failed, 2 bad arguments or run.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Sequence

import jax
from absl import flags
from absl import logging as absl_logging
import numpy as np
from etils import epath
from PIL import Image, ImageOps, UnidentifiedImageError

from ssfer_jax import cli, inference
from ssfer_jax.data import images
from ssfer_jax.inference import RunInfo
from ssfer_jax.tools import faces

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                    ".ppm")


# -- images ------------------------------------------------------------------------------
def expand_paths(paths: Sequence[str]) -> list[str]:
  """Files as given (in order); folders -> their image files, sorted, recursively."""
  out = []
  for p in paths:
    path = epath.Path(p)
    if path.is_dir():
      found = sorted(str(f) for f in _walk(path) if f.suffix.lower() in IMAGE_EXTENSIONS)
      if not found:
        print(f"warning: {p}: folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})",
              file=sys.stderr)
      out += found
    else:
      out.append(str(p))
  return out


def _walk(folder: epath.Path):
  """Files under ``folder``, recursively (epath has no recursive glob on every backend)."""
  for p in folder.iterdir():
    if p.is_dir():
      yield from _walk(p)
    else:
      yield p


def read_image(path) -> np.ndarray:
  """uint8 (H, W, 3) RGB, EXIF orientation applied, decoded as the dataset builders decode
  (``images.pil_to_mode``). Raises ValueError for a non-image."""
  path = epath.Path(path)
  if not path.exists():
    raise ValueError("no such file")
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
      img = ImageOps.exif_transpose(img)
      return np.asarray(images.pil_to_mode(img, "RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"not a readable image ({e.__class__.__name__})") from e


# -- prediction ---------------------------------------------------------------------------
def make_predict_fn(run: RunInfo):
  """jitted (variables, uint8 (N,H,W,C)) -> class probabilities (N, num_classes)."""
  model, mean, std = run.model(), run.mean, run.std
  return jax.jit(lambda variables, x: inference.probabilities(model, variables, x, mean, std))


def predict_paths(run: RunInfo, paths: Sequence[str], *, detect_faces: bool = False,
                  margin: float = 0.1, batch_size: int = 64, detector=None) -> list[dict]:
  """One record per path: {path, prediction, confidence, probabilities, face_box, error}.

  Images are decoded on the host and evaluated in fixed-size batches (the last one
  padded), so the network compiles once.
  """
  if detect_faces and detector is None:
    detector = faces.FaceDetector()
  records, inputs = [], []
  for p in paths:
    rec = {"path": str(p), "prediction": None, "confidence": None, "probabilities": None,
           "face_box": None, "error": None}
    records.append(rec)
    try:
      img = read_image(p)
      if detector is not None:
        box, img = faces.largest_face_crop(detector, img, margin)
        rec["face_box"] = list(box)
      inputs.append((rec, images.fit(img, run.image_size, run.channels)))
    except ValueError as e:
      rec["error"] = str(e)
  if inputs:
    fn = make_predict_fn(run)
    bs = min(batch_size, len(inputs))
    for start in range(0, len(inputs), bs):
      chunk = inputs[start:start + bs]
      x = np.stack([img for _, img in chunk])
      if len(chunk) < bs:
        x = np.concatenate([x, np.zeros((bs - len(chunk),) + x.shape[1:], x.dtype)])
      probs = np.asarray(fn(run.variables, x))[:len(chunk)]
      for (rec, _), p in zip(chunk, probs):
        k = int(np.argmax(p))
        rec["prediction"] = run.class_names[k]
        rec["confidence"] = float(p[k])
        rec["probabilities"] = {n: float(v) for n, v in zip(run.class_names, p)}
  return records


def format_table(records: list[dict], class_names: Sequence[str]) -> str:
  width = max([len("file")] + [len(r["path"]) for r in records])
  cols = [n[:9] for n in class_names]
  lines = [f"{'file':<{width}}  {'expression':<10} " + " ".join(f"{c:>9}" for c in cols)]
  for r in records:
    if r["error"]:
      lines.append(f"{r['path']:<{width}}  error: {r['error']}")
    else:
      probs = " ".join(f"{r['probabilities'][n]:>9.3f}" for n in class_names)
      lines.append(f"{r['path']:<{width}}  {r['prediction']:<10} {probs}")
  return "\n".join(lines)


def write_records(records: list[dict], class_names: Sequence[str], out) -> None:
  out = epath.Path(out)
  suffix = out.suffix.lower()
  if out.parent and not out.parent.exists():
    out.parent.mkdir(parents=True, exist_ok=True)
  if suffix == ".json":
    out.write_text(json.dumps({"class_names": list(class_names), "predictions": records},
                              indent=2) + "\n")
  elif suffix == ".csv":
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "prediction", "confidence"] + [f"p_{n}" for n in class_names]
               + ["face_x", "face_y", "face_w", "face_h", "error"])
    for r in records:
      probs = ([f"{r['probabilities'][n]:.6f}" for n in class_names] if r["probabilities"]
               else [""] * len(class_names))
      box = r["face_box"] or [""] * 4
      conf = f"{r['confidence']:.6f}" if r["confidence"] is not None else ""
      w.writerow([r["path"], r["prediction"] or "", conf] + probs + box + [r["error"] or ""])
    out.write_text(buf.getvalue())
  else:
    raise ValueError(f"--out={out}: use a .csv or .json file name")


def synthetic_warning(config) -> str | None:
  """Why a run's predictions on real photos mean nothing, if it was trained on the built-in
  synthetic faces (a pipeline check, not a facial-expression model)."""
  if config.dataset.name != "synthetic":
    return None
  return ("this run was trained on the built-in synthetic faces (config.dataset.name="
          "'synthetic'): it checks the pipeline and is not a facial-expression model, so its "
          "labels for real photos are meaningless; train on a real dataset first "
          "(python -m ssfer_jax.main --list shows them)")


FLAGS = flags.FlagValues()  # this tool's own flags: main() runs in-process next to the others
_RUN = inference.RunFlags(FLAGS)
_DETECT_FACES = flags.DEFINE_bool("detect_faces", False,
                                  "crop the largest face found by OpenCV's Haar cascade",
                                  flag_values=FLAGS)
_MARGIN = flags.DEFINE_float("margin", 0.1, "face crop margin, as a fraction of the face box side",
                             lower_bound=0.0, flag_values=FLAGS)
_MIN_FACE = flags.DEFINE_float("min_face", 0.1, "smallest face searched, as a fraction of the "
                               "photo's shorter side", flag_values=FLAGS)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "images per forward pass", lower_bound=1,
                                   flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "write the predictions to this .csv or .json file",
                           flag_values=FLAGS)
flags.register_validator("min_face", lambda v: 0 < v <= 1, "must be in (0, 1]",
                         flag_values=FLAGS)
flags.register_validator("out",
                         lambda v: not v or epath.Path(v).suffix.lower() in (".csv", ".json"),
                         "use a .csv or .json file name", flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  paths = cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.predict", __doc__, positional="PATH")
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's info/warnings on restore
  run = _RUN.restore()
  warning = synthetic_warning(run.config)
  if warning:
    print(f"warning: {warning}", file=sys.stderr, flush=True)
  detector = faces.FaceDetector(min_frac=_MIN_FACE.value) if _DETECT_FACES.value else None
  paths = expand_paths(paths)
  records = predict_paths(run, paths, detect_faces=_DETECT_FACES.value, margin=_MARGIN.value,
                          batch_size=_BATCH_SIZE.value, detector=detector)
  member = "" if run.member is None else f" of member {run.member}"
  print(f"{run.weights} weights{member} of {run.checkpoint_dir} step {run.step}, "
        f"{run.image_size}px, {run.channels} channel(s)")
  print(format_table(records, run.class_names))
  failed = sum(1 for r in records if r["error"])
  print(f"{len(records) - failed} of {len(records)} file(s) predicted"
        + (f", {failed} failed" if failed else ""))
  if _OUT.value:
    write_records(records, run.class_names, _OUT.value)
    print(f"wrote {_OUT.value}")
  return 3 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
