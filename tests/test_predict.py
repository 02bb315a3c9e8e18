"""ssfer_jax.tools.predict on a tiny trained run: restore, face detection on real CK+ photos,
the CSV / JSON outputs, and per-file errors."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util
from PIL import Image

from ssfer_jax import checkpoint, inference, train
from ssfer_jax.tools import faces, predict
from ssfer_jax.config import base_config, set_algorithm
from ssfer_jax.data import classes

CACHE = os.path.join(os.path.dirname(__file__), ".cache", "ckplus")  # shared with test_ckplus.py


def ck_plus_images():
  """The 101 CK+ frames of the EmoPy 0.0.5 wheel (SPEC §5), fetched into the git-ignored
  tests/.cache at test time (never committed: the licence forbids redistribution)."""
  root = os.path.join(CACHE, "extracted", "EmoPy", "examples", "image_data")
  if not os.path.isdir(root):
    wheels = glob.glob(os.path.join(CACHE, "EmoPy-0.0.5-*.whl"))
    if not wheels:
      os.makedirs(CACHE, exist_ok=True)
      try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.6.9", "emopy==0.0.5",
                        "-d", CACHE, "-q"], capture_output=True, text=True, timeout=120,
                       check=True)
      except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"could not download the EmoPy wheel with the CK+ frames (offline?): {e}")
      wheels = glob.glob(os.path.join(CACHE, "EmoPy-0.0.5-*.whl"))
      if not wheels:
        pytest.skip("pip download succeeded but no EmoPy-0.0.5 wheel appeared")
    tmp = tempfile.mkdtemp(dir=CACHE)  # extract, then rename: no half-extracted cache
    with zipfile.ZipFile(wheels[0]) as z:
      z.extractall(tmp, [n for n in z.namelist() if "/examples/image_data/" in n])
    try:
      os.rename(tmp, os.path.join(CACHE, "extracted"))
    except OSError:  # another process got there first
      shutil.rmtree(tmp, ignore_errors=True)
  files = sorted(glob.glob(os.path.join(root, "**", "*.png"), recursive=True))
  assert len(files) == 101, f"expected the wheel's 101 CK+ frames, found {len(files)}"
  return root, files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run directory as the trainer leaves it (config.json + orbax checkpoint at step 1),
  holding a random state (nothing compiled): student and teacher differ."""
  c = base_config()
  set_algorithm(c, "supervised")
  c.dataset.num_train, c.dataset.num_test = 56, 16
  c.data.batch_size, c.eval.batch_size = 8, 16
  c.data.labels_per_class = 1  # 56 random synthetic images: some class has only one
  workdir = tmp_path_factory.mktemp("run")
  trainer = train.Trainer(c, str(workdir), devices=jax.devices()[:1])
  rng = np.random.default_rng(0)

  def fill(leaf):
    value = rng.normal(size=leaf.shape) if np.issubdtype(leaf.dtype, np.floating) else 0
    return jax.device_put(np.asarray(value, leaf.dtype), leaf.sharding)

  state = jax.tree.map(fill, trainer.abstract_state).replace(step=jnp.int32(1))
  state = state.replace(batch_stats=jax.tree.map(jnp.abs, state.batch_stats),
                        ema_batch_stats=jax.tree.map(jnp.abs, state.ema_batch_stats))
  (workdir / "config.json").write_text(c.to_json_best_effort(indent=2, sort_keys=True))
  ckpt = checkpoint.Checkpointer(workdir, keep=1, async_save=False)
  ckpt.save(1, state, {"labeled": None, "unlabeled": None})
  ckpt.close()
  return workdir


def _saved(run_dir, key):
  state = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / "1" / "state")
  return traverse_util.flatten_dict(state[key], sep="/")


@pytest.mark.parametrize("weights,key", [("teacher", "ema_params"), ("student", "params")])
def test_restore_reads_the_chosen_weights(run_dir, weights, key):
  ckpt = run_dir / "checkpoints" / "1" if weights == "student" else None
  run = inference.restore(None if ckpt else run_dir, ckpt, weights=weights)
  assert run.step == 1 and run.class_names == classes.CANONICAL7 and run.channels == 3
  got = traverse_util.flatten_dict(run.variables["params"], sep="/")
  want = _saved(run_dir, key)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])
  other = _saved(run_dir, "params" if key == "ema_params" else "ema_params")
  assert not np.array_equal(want["fc/kernel"], other["fc/kernel"])  # the choice matters


def test_ck_plus_faces_to_csv(run_dir, tmp_path, capsys):
  pytest.importorskip("cv2")  # the optional face detector (opencv-python-headless < 5)
  root, files = ck_plus_images()
  out = tmp_path / "preds.csv"
  rc = predict.main([f"--workdir={run_dir}", "--detect_faces", "--min_face=0.2",
                     f"--out={out}", root])
  assert rc == 0, capsys.readouterr()
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert [r["path"] for r in rows] == files
  for r in rows:
    assert r["error"] == "" and r["prediction"] in classes.CANONICAL7
    probs = np.array([float(r[f"p_{n}"]) for n in classes.CANONICAL7])
    assert abs(probs.sum() - 1) < 1e-4 and float(r["confidence"]) == pytest.approx(probs.max())
    x, y, w, h = (int(r[k]) for k in ("face_x", "face_y", "face_w", "face_h"))
    # CK+ frames are 640x490 with one frontal face filling roughly half the height.
    assert 0 <= x and x + w <= 640 and 0 <= y and y + h <= 490 and 150 <= h <= 400
  table = capsys.readouterr().out
  assert "101 of 101 file(s) predicted" in table and "happiness" in table


def test_bad_files_are_reported_and_others_processed(run_dir, tmp_path, capsys):
  pytest.importorskip("cv2")
  _, files = ck_plus_images()
  blank = tmp_path / "blank.png"
  Image.fromarray(np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (160, 1))).save(blank)
  notes = tmp_path / "notes.png"
  notes.write_text("not an image")
  out = tmp_path / "preds.json"
  paths = [files[0], str(notes), str(blank), files[-1]]
  rc = predict.main([f"--workdir={run_dir}", "--detect_faces", f"--out={out}", *paths])
  assert rc == 3
  printed = capsys.readouterr().out
  assert "2 of 4 file(s) predicted, 2 failed" in printed
  recs = json.loads(out.read_text())
  assert recs["class_names"] == list(classes.CANONICAL7)
  by_path = {r["path"]: r for r in recs["predictions"]}
  assert by_path[str(notes)]["error"].startswith("not a readable image")
  assert by_path[str(blank)]["error"].startswith("no face found")
  for p in (files[0], files[-1]):
    assert by_path[p]["error"] is None and len(by_path[p]["face_box"]) == 4
    assert sum(by_path[p]["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_batching_and_crop(run_dir):
  """Padding the last batch does not change predictions; crops stay inside the photo."""
  run = inference.restore(run_dir)
  rng = np.random.default_rng(0)
  imgs = []
  for i in range(5):
    p = run_dir / f"img{i}.png"
    Image.fromarray(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)).save(p)
    imgs.append(str(p))
  one = predict.predict_paths(run, imgs, batch_size=64)
  small = predict.predict_paths(run, imgs, batch_size=2)
  for a, b in zip(one, small):
    assert a["prediction"] == b["prediction"]
    np.testing.assert_allclose(list(a["probabilities"].values()),
                               list(b["probabilities"].values()), atol=1e-6)
  img = np.zeros((100, 80, 3), np.uint8)
  assert faces.crop_face(img, (60, 10, 20, 20), 0.5).shape[:2] == (40, 40)  # shifted inside
  assert faces.crop_face(img, (0, 0, 80, 80), 0.5).shape[:2] == (100, 80)   # clipped


def test_clear_errors_for_bad_run(tmp_path, capsys):
  assert predict.main([f"--workdir={tmp_path}", "x.png"]) == 2
  assert "config.json" in capsys.readouterr().err
  (tmp_path / "config.json").write_text(base_config().to_json())
  assert predict.main([f"--workdir={tmp_path}", "x.png"]) == 2
  assert "no checkpoint" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    predict.main([f"--workdir={tmp_path}", "--out=preds.txt", "x.png"])


def test_export_loads_without_training_code(run_dir, tmp_path):
  """The README loader (jax + numpy + PIL only) in a fresh process gives predict's output."""
  from ssfer_jax.tools import export
  out = tmp_path / "exported"
  assert export.main([f"--workdir={run_dir}", f"--output={out}", "--platforms=cpu"]) == 0
  face = tmp_path / "face.png"
  Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 44, 3), np.uint8)).save(face)
  doc = export.__doc__
  loader = doc[doc.index("    import json"):doc.index("ONNX")].replace("\n    ", "\n").strip()
  loader = loader.replace('"DIR"', repr(str(out))).replace('"face.jpg"', repr(str(face)))
  loader += ("\nimport sys; assert not [m for m in sys.modules if m.split('.')[0] in "
             "('ssfer_jax', 'flax', 'orbax', 'optax')]\nprint(json.dumps(probs[0].tolist()))")
  r = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True,
                     cwd=tmp_path, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  got = np.array(json.loads(r.stdout.strip().splitlines()[-1]))
  run = inference.restore(run_dir)
  want = predict.predict_paths(run, [str(face)])[0]["probabilities"]
  np.testing.assert_allclose(got, [want[n] for n in run.class_names], atol=1e-5)
  fn, meta = export.load(out)  # symbolic batch: any batch size
  x = np.zeros((3, meta["image_size"], meta["image_size"], meta["channels"]), np.uint8)
  assert np.asarray(fn(x)).shape == (3, len(classes.CANONICAL7))
  assert meta["source"] == {"checkpoint": str(run_dir / "checkpoints"), "step": 1,
                            "weights": "teacher", "member": None}  # member: of a population


def test_grey_run(tmp_path):
  """A 1-channel run (FER2013 / FERPlus are grey): the channel count is read off the
  checkpoint and RGB inputs are converted to grey (luma), not cut to their red channel."""
  from ssfer_jax import algorithms, optim, state as state_lib
  from ssfer_jax.models import build_model
  c = base_config()
  set_algorithm(c, "supervised")
  c.data.mean, c.data.std = (0.5,), (0.25,)  # one value per channel
  model = build_model(c.model, 7)
  _, tx = optim.make_optimizer(c.optim, 10)
  size = c.data.image_size
  abstract = jax.eval_shape(lambda: state_lib.create(
      model, tx, algorithms.get_algorithm("supervised"), c.algo, rng=jax.random.PRNGKey(0),
      image_shape=(size, size, 1), num_classes=7, num_unlabeled=0))
  rng = np.random.default_rng(1)
  state = jax.tree.map(lambda a: jnp.asarray(
      np.abs(rng.normal(size=a.shape)) if np.issubdtype(a.dtype, np.floating) else
      np.zeros(a.shape), a.dtype), abstract)
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  ckpt = checkpoint.Checkpointer(tmp_path, keep=1, async_save=False)
  ckpt.save(3, state, {})
  ckpt.close()
  run = inference.restore(tmp_path)
  assert run.channels == 1 and run.step == 3
  colour = np.zeros((size, size, 3), np.uint8)
  colour[..., 1] = 200  # pure green: red channel 0, luma ~117
  Image.fromarray(colour).save(tmp_path / "green.png")
  Image.fromarray(np.full((size, size), 117, np.uint8)).save(tmp_path / "grey.png")
  Image.fromarray(np.zeros((size, size), np.uint8)).save(tmp_path / "black.png")
  green, grey, black = predict.predict_paths(
      run, [str(tmp_path / n) for n in ("green.png", "grey.png", "black.png")])
  assert green["probabilities"] == grey["probabilities"] != black["probabilities"]
