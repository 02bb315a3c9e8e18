"""Predict the expression of face images with a trained run.

    python -m ssfer_jax.predict --workdir=RUN [--detect_faces] [--out=preds.csv|preds.json] PATH...
    python -m ssfer_jax.predict --checkpoint=RUN/checkpoints[/STEP] PATH...

PATH: image files or folders (searched recursively for .jpg .jpeg .png .bmp .gif .tif
.tiff .webp .pgm .ppm). For each image: the predicted expression (the run's class
names: the canonical order of ``ssfer_jax/data/classes.py`` for the standard datasets)
and the probability of every class, printed as a table; ``--out`` also writes them as
CSV (one row per file: path, prediction, confidence, p_<class>..., face box, error) or
JSON (a list of such records), chosen by the file's extension.

The run is restored from its orbax checkpoint (latest step unless ``--step``) and its
``config.json`` (model, image size, normalisation). The teacher (EMA) weights are
used unless ``--weights=student``. Only the network's variables are read, so neither
the dataset nor the optimizer is needed.

Images are fed like the training data: resized (bilinear) to the run's square image
size and converted to its channel count. Photos that are not pre-aligned face crops
need ``--detect_faces``: OpenCV's frontal-face Haar cascade finds the faces, the
largest is cropped as a square enlarged by ``--margin`` (default 0.1) of its side on
every side (shifted or clipped to stay inside the photo). A file that is not a readable image, or
in which no face is found, gets an error row; the other files are still processed.
Exit status: 0 all predicted, 3 some files failed, 2 bad arguments or run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging as absl_logging
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from PIL import Image, ImageOps, UnidentifiedImageError

from ssfer_jax import rundir
from ssfer_jax.data import classes
from ssfer_jax.data.pipeline import fit_image
from ssfer_jax.models import build_model
from ssfer_jax.step import normalize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm",
                    ".ppm")
WEIGHTS = {"teacher": ("ema_params", "ema_batch_stats"), "student": ("params", "batch_stats")}


# -- restoring a run ---------------------------------------------------------------------
@dataclasses.dataclass
class RunInfo:
  """What inference needs from a run: the model's variables and how to feed it."""
  config: ml_collections.ConfigDict
  variables: dict              # {"params": ..., "batch_stats": ...}
  class_names: tuple
  channels: int
  step: int
  checkpoint_dir: epath.Path
  weights: str = "teacher"     # 'teacher' (EMA) or 'student'

  @property
  def image_size(self) -> int:
    return int(self.config.data.image_size)

  @property
  def mean(self) -> tuple:
    return tuple(float(v) for v in self.config.data.mean)

  @property
  def std(self) -> tuple:
    return tuple(float(v) for v in self.config.data.std)

  def model(self):
    return build_model(self.config.model, len(self.class_names))


def locate(workdir=None, checkpoint=None, step: int | None = None):
  """-> (workdir, checkpoints directory, step). ``checkpoint`` is WORKDIR/checkpoints or
  one step directory inside it; its workdir is the folder holding config.json."""
  if (workdir is None) == (checkpoint is None):
    raise ValueError("pass exactly one of --workdir=RUN or --checkpoint=DIR")
  if workdir is not None:
    workdir = epath.Path(workdir)
    ckpt_dir = workdir / "checkpoints"
  else:
    ckpt_dir = epath.Path(checkpoint)
    if not ckpt_dir.exists():
      raise FileNotFoundError(f"--checkpoint={ckpt_dir}: no such directory")
    if (ckpt_dir / "state").is_dir() and ckpt_dir.name.isdigit():
      if step is not None and int(ckpt_dir.name) != step:
        raise ValueError(f"--checkpoint={ckpt_dir} is step {ckpt_dir.name} but --step={step}")
      step = int(ckpt_dir.name)
      ckpt_dir = ckpt_dir.parent
    workdir = ckpt_dir.parent
  if not (workdir / "config.json").exists():
    raise FileNotFoundError(f"{workdir / 'config.json'} not found: point --workdir at a run "
                            "directory written by `python -m ssfer_jax.main`")
  steps = sorted(int(p.name) for p in ckpt_dir.glob("*")
                 if p.name.isdigit() and (p / "state").is_dir()) if ckpt_dir.exists() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint in {ckpt_dir}: the run has not saved one yet "
                            "(config.train.checkpoint_every)")
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"--step={step} is not in {ckpt_dir} (available: {steps})")
  return workdir, ckpt_dir, step


def load_config(workdir) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(rundir.read_json(epath.Path(workdir) / rundir.CONFIG))


def run_class_names(workdir, num_classes: int) -> tuple:
  """The run's class names: from its eval/summary files, else the canonical order."""
  workdir = epath.Path(workdir)
  candidates = [workdir / "summary.json"] + sorted((workdir / "eval").glob("step_*.json"))
  for p in candidates:
    rec = rundir.read_json_or_warn(p, what="class names looked up elsewhere")
    if rec is not None:
      names = rec.get("class_names")
      if names and len(names) == num_classes:
        return tuple(names)
  return classes.class_names(num_classes)


def _leaf_shapes(tree) -> dict:
  """{"a/b/leaf": shape} of a nested dict of arrays, ShapeDtypeStructs or orbax metadata."""
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


def restore(workdir=None, checkpoint=None, *, step: int | None = None,
            weights: str = "teacher") -> RunInfo:
  """The network variables of a run's checkpoint (only those are read), on one device."""
  if weights not in WEIGHTS:
    raise ValueError(f"--weights must be one of {sorted(WEIGHTS)}, got {weights!r}")
  workdir, ckpt_dir, step = locate(workdir, checkpoint, step)
  config = load_config(workdir)
  state_dir = ckpt_dir / str(step) / "state"
  saved = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
  p_key, s_key = WEIGHTS[weights]
  if p_key not in saved:
    raise ValueError(f"{state_dir}: no '{p_key}' in the checkpoint (has {sorted(saved)})")
  saved_params = _leaf_shapes(saved[p_key])
  fc = saved_params.get("fc/kernel")
  if fc is None:
    raise ValueError(f"{state_dir}: no fc/kernel among the '{p_key}' leaves")
  num_classes = fc[-1]
  model = build_model(config.model, num_classes)
  channels, expected = None, None
  for c in (3, 1):  # the channel count is the one whose parameter shapes match the checkpoint
    shapes = jax.eval_shape(lambda c=c: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)},
        jnp.zeros((1, config.data.image_size, config.data.image_size, c)), train=False))
    if _leaf_shapes(shapes["params"]) == saved_params:
      channels, expected = c, shapes
      break
  if channels is None:
    raise ValueError(f"{state_dir}: the saved '{p_key}' do not match the model that "
                     f"{workdir / 'config.json'} describes (config.model.backbone="
                     f"{config.model.backbone!r}); was config.json edited after training?")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {key: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                              expected[col])
            for key, col in ((p_key, "params"), (s_key, "batch_stats")) if col in expected}
  restored = ocp.PyTreeCheckpointer().restore(
      state_dir, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
  variables = {"params": restored[p_key]}
  if s_key in restored:
    variables["batch_stats"] = restored[s_key]
  return RunInfo(config, variables, run_class_names(workdir, num_classes), channels, step,
                 ckpt_dir, weights)


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
  """uint8 (H, W, 3) RGB, EXIF orientation applied. Raises ValueError for a non-image."""
  path = epath.Path(path)
  if not path.exists():
    raise ValueError("no such file")
  try:
    with Image.open(io.BytesIO(path.read_bytes())) as img:
      img = ImageOps.exif_transpose(img)
      return np.asarray(img.convert("RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"not a readable image ({e.__class__.__name__})") from e


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
  """RGB uint8 -> the run's channel count (grey by ITU-R 601 luma, as PIL's 'L')."""
  if channels == 3:
    return rgb
  return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


class FaceDetector:
  """OpenCV's frontal-face Haar cascade; returns the largest face's (x, y, w, h).

  Photos are searched at most ``max_side`` pixels wide/high, for faces of at least
  ``min_frac`` of the shorter side (smaller values find smaller faces, more slowly).
  Needs OpenCV 4 (OpenCV 5 moved the cascade classifier out of the main package).
  """

  def __init__(self, max_side: int = 640, min_frac: float = 0.1):
    try:
      import cv2
    except ImportError as e:
      raise ImportError("--detect_faces needs OpenCV 4: pip install 'opencv-python-headless<5'"
                        ) from e
    if not hasattr(cv2, "CascadeClassifier"):
      raise ImportError(f"--detect_faces needs OpenCV 4's Haar cascades, which OpenCV "
                        f"{cv2.__version__} does not ship: pip install 'opencv-python-headless<5'")
    self.cv2 = cv2
    path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
    self.cascade = cv2.CascadeClassifier(path)
    if self.cascade.empty():
      raise RuntimeError(f"OpenCV could not load its Haar cascade {path}")
    self.max_side, self.min_frac = max_side, min_frac

  def largest_face(self, rgb: np.ndarray):
    gray = self.cv2.cvtColor(np.ascontiguousarray(rgb), self.cv2.COLOR_RGB2GRAY)
    scale = min(1.0, self.max_side / max(gray.shape))
    if scale < 1.0:  # detection on large photos is slow and needs no full resolution
      gray = self.cv2.resize(gray, None, fx=scale, fy=scale, interpolation=self.cv2.INTER_AREA)
    gray = self.cv2.equalizeHist(gray)
    min_side = max(20, int(self.min_frac * min(gray.shape)))
    faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                          minSize=(min_side, min_side))
    if len(faces) == 0:
      return None
    x, y, w, h = max(faces, key=lambda f: int(f[2]) * int(f[3]))
    return tuple(int(round(v / scale)) for v in (x, y, w, h))


def crop_face(img: np.ndarray, box, margin: float) -> np.ndarray:
  """Square crop around ``box`` = (x, y, w, h), side max(w, h) * (1 + 2 margin), moved
  to lie inside the image, and clipped where the image is smaller than the square."""
  x, y, w, h = box
  ih, iw = img.shape[:2]
  side = int(round(max(w, h) * (1 + 2 * margin)))
  cx, cy = x + w / 2, y + h / 2
  left = int(round(min(max(cx - side / 2, 0), max(iw - side, 0))))
  top = int(round(min(max(cy - side / 2, 0), max(ih - side, 0))))
  return img[top:min(top + side, ih), left:min(left + side, iw)]


# -- prediction ---------------------------------------------------------------------------
def make_predict_fn(run: RunInfo):
  """jitted (variables, uint8 (N,H,W,C)) -> class probabilities (N, num_classes)."""
  model, mean, std = run.model(), run.mean, run.std

  @jax.jit
  def predict(variables, images):
    logits = model.apply(variables, normalize(images, mean, std), train=False)["logits"]
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return predict


def predict_paths(run: RunInfo, paths: Sequence[str], *, detect_faces: bool = False,
                  margin: float = 0.1, batch_size: int = 64, detector=None) -> list[dict]:
  """One record per path: {path, prediction, confidence, probabilities, face_box, error}.

  Images are decoded on the host and evaluated in fixed-size batches (the last one
  padded), so the network compiles once.
  """
  if detect_faces and detector is None:
    detector = FaceDetector()
  records, inputs = [], []
  for p in paths:
    rec = {"path": str(p), "prediction": None, "confidence": None, "probabilities": None,
           "face_box": None, "error": None}
    records.append(rec)
    try:
      img = read_image(p)
      if detector is not None:
        box = detector.largest_face(img)
        if box is None:
          raise ValueError("no face found (if the image is already a cropped face, run "
                           "without --detect_faces)")
        rec["face_box"] = list(box)
        img = crop_face(img, box, margin)
      inputs.append((rec, fit_image(to_channels(img, run.channels), run.image_size,
                                    run.channels)))
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ssfer_jax.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
  parser.add_argument("--workdir", help="a run directory (config.json + checkpoints/)")
  parser.add_argument("--checkpoint", help="RUN/checkpoints or RUN/checkpoints/STEP")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--weights", choices=sorted(WEIGHTS), default="teacher")
  parser.add_argument("--detect_faces", action="store_true",
                      help="crop the largest face found by OpenCV's Haar cascade")
  parser.add_argument("--margin", type=float, default=0.1,
                      help="face crop margin, as a fraction of the face box side")
  parser.add_argument("--min_face", type=float, default=0.1,
                      help="smallest face searched, as a fraction of the photo's shorter side")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--out", help="write the predictions to this .csv or .json file")
  args = parser.parse_args(argv)
  if args.out and epath.Path(args.out).suffix.lower() not in (".csv", ".json"):
    parser.error(f"--out={args.out}: use a .csv or .json file name")
  if args.batch_size < 1 or args.margin < 0 or not 0 < args.min_face <= 1:
    parser.error("--batch_size must be >= 1, --margin >= 0 and --min_face in (0, 1]")
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's info/warnings on restore
  try:
    run = restore(args.workdir, args.checkpoint, step=args.step, weights=args.weights)
    detector = FaceDetector(min_frac=args.min_face) if args.detect_faces else None
  except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  paths = expand_paths(args.paths)
  records = predict_paths(run, paths, detect_faces=args.detect_faces, margin=args.margin,
                          batch_size=args.batch_size, detector=detector)
  print(f"{run.weights} weights of {run.checkpoint_dir} step {run.step}, "
        f"{run.image_size}px, {run.channels} channel(s)")
  print(format_table(records, run.class_names))
  failed = sum(1 for r in records if r["error"])
  print(f"{len(records) - failed} of {len(records)} file(s) predicted"
        + (f", {failed} failed" if failed else ""))
  if args.out:
    write_records(records, run.class_names, args.out)
    print(f"wrote {args.out}")
  return 3 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
