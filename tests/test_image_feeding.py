"""One image-feeding rule (``ssfer_jax/data/images.py``): the same grey and RGB images
reach a 1-channel and a 3-channel network as the same float arrays through training's
eval path, ``evaluate``, ``predict`` and the exported function."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ssfer_jax import algorithms, checkpoint, inference, models, optim
from ssfer_jax.tools import evaluate, export, predict
from ssfer_jax import state as state_lib
from ssfer_jax import step as step_lib
from ssfer_jax.data import classes, images, pipeline
from tests.conftest import tiny_config

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # unequal, so channels matter


def test_luma_and_repeat_hand_computed():
  # PIL 'L' (ITU-R 601): (19595 R + 38470 G + 7471 B + 32768) >> 16, worked by hand:
  # red 255 -> 5029493 >> 16 = 76; green 255 -> 9842618 >> 16 = 150;
  # blue 255 -> 1937873 >> 16 = 29; (10, 20, 30) -> 1222248 >> 16 = 18; grey g -> g.
  rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30], [77, 77, 77]]],
                 np.uint8)
  assert images.to_grey(rgb)[..., 0].tolist() == [[76, 150, 29, 18, 77]]
  assert images.fit(rgb, 5, 1)[0, :, 0].tolist() == [76, 150, 29, 18, 77]  # not red (channel 0)
  grey = np.array([[3, 200]], np.uint8)
  assert images.to_channels(grey, 3).tolist() == [[[3, 3, 3], [200, 200, 200]]]
  with pytest.raises(ValueError, match="expected"):
    images.fit(np.zeros((4, 4, 4), np.uint8), 4, 3)  # RGBA: decoders flatten alpha first


def test_rgb_feeding_unchanged_and_luma_before_resize():
  """RGB runs keep the former rule bit for bit (bilinear PIL resize; grey repeated after
  it); a grey run takes luma at full resolution, then resizes."""
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (41, 29, 3), np.uint8)
  grey = rng.integers(0, 256, (37, 53), np.uint8)
  pil_resize = lambda a: np.asarray(Image.fromarray(a).resize((24, 24), Image.BILINEAR))
  np.testing.assert_array_equal(images.fit(rgb, 24, 3), pil_resize(rgb))
  np.testing.assert_array_equal(images.fit(grey, 24, 3),
                                np.repeat(pil_resize(grey)[..., None], 3, -1))
  np.testing.assert_array_equal(images.fit(grey[..., None], 24, 1), pil_resize(grey)[..., None])
  np.testing.assert_array_equal(images.fit(rgb, 24, 1),
                                pil_resize(np.asarray(Image.fromarray(rgb).convert("L")))[..., None])


def test_predict_decodes_files_as_the_builders_do(tmp_path):
  """Transparency goes onto white and 16-bit grey is scaled, for a photo given to predict
  as for a dataset image (both call images.pil_to_mode)."""
  from ssfer_jax.data.builders.common import FerBuilder, SplitReport

  class RgbBuilder:  # what check_image_bytes reads off a builder
    CHANNELS = 3
    report = staticmethod(SplitReport)

  rgba = np.zeros((2, 2, 4), np.uint8)
  rgba[0, 0] = (10, 20, 30, 255)                        # opaque
  rgba[0, 1] = (200, 0, 0, 0)                           # transparent: white
  Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
  Image.fromarray(np.array([[0, 65535], [32768, 257]], np.uint16)).save(tmp_path / "deep.png")
  got = predict.read_image(tmp_path / "rgba.png")
  assert got[0, 0].tolist() == [10, 20, 30] and got[0, 1].tolist() == [255, 255, 255]
  # 16-bit v -> round(v / 65535 * 255): 0, 255, 128, 1 (PIL's own convert would clip at 255).
  assert predict.read_image(tmp_path / "deep.png")[..., 0].tolist() == [[0, 255], [128, 1]]
  for name in ("rgba.png", "deep.png"):
    prepared = FerBuilder.check_image_bytes(RgbBuilder(), "train",
                                            (tmp_path / name).read_bytes(), name)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(prepared))),
                                  predict.read_image(tmp_path / name), err_msg=name)


# -- the four paths ------------------------------------------------------------------------
class _Source:
  """An in-memory split, as ``datasets.load_dataset`` returns one."""

  def __init__(self, items):
    self.items = items
    self.labels = np.arange(len(items), dtype=np.int32)

  def __len__(self):
    return len(self.items)

  def __getitem__(self, i):
    return {"image": self.items[i], "label": int(self.labels[i])}


class _Spy:
  """Stands in for the network: records the float array it is fed (from inside jit)."""

  def __init__(self, num_classes=7):
    self.seen, self.num_classes = [], num_classes

  def apply(self, variables, x, train=False, **kwargs):
    jax.debug.callback(lambda v: self.seen.append(np.asarray(v)), x)
    return {"logits": jnp.zeros((x.shape[0], self.num_classes), jnp.float32)}

  def first(self):
    jax.effects_barrier()  # the callbacks have run
    return self.seen[0]


def _run(tmp_path, channels: int):
  """A run directory (config.json + checkpoint) whose network takes ``channels`` channels."""
  c = tiny_config("supervised")
  c.data.mean, c.data.std = MEAN, STD
  model = models.build_model(c.model, 7)
  _, tx = optim.make_optimizer(c.optim, 10)
  size = c.data.image_size
  state = state_lib.create(model, tx, algorithms.get_algorithm("supervised"), c.algo,
                           rng=jax.random.PRNGKey(0), image_shape=(size, size, channels),
                           num_classes=7, num_unlabeled=0)
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  ckpt = checkpoint.Checkpointer(tmp_path, keep=1, async_save=False)
  ckpt.save(1, state, {})
  ckpt.close()
  return c


@pytest.mark.parametrize("channels", [1, 3])
def test_same_network_input_everywhere(tmp_path, monkeypatch, channels):
  config = _run(tmp_path, channels)
  size = config.data.image_size
  rng = np.random.default_rng(channels)
  grey = rng.integers(0, 256, (37, 53), np.uint8)
  rgb = rng.integers(0, 256, (41, 29, 3), np.uint8)
  Image.fromarray(grey, "L").save(tmp_path / "grey.png")
  Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
  files = [str(tmp_path / "grey.png"), str(tmp_path / "rgb.png")]
  # As datasets store them: a grey dataset (H, W, 1), an RGB dataset (H, W, 3) (grey
  # files repeated by the builders' PIL convert("RGB")).
  source = _Source([grey[..., None], np.repeat(grey[..., None], 3, -1), rgb])
  got = {}

  # Training's eval path: pipeline.eval_arrays -> the jitted eval step (normalises).
  spy = _Spy()
  x, y = pipeline.eval_arrays(source, size, channels)
  state = state_lib.TrainState(step=None, params={}, batch_stats={}, ema_params={},
                               ema_batch_stats={}, opt_state=None, rng=None, algo=None)
  jax.jit(step_lib.make_eval_step(spy, config, 7))(state, x, y, np.ones(len(y), bool))
  got["train"] = spy.first()

  # evaluate.evaluate with the split read from memory and the spy as its network.
  spy = _Spy()
  monkeypatch.setattr(evaluate, "load_split", lambda cfg, split: (
      source, "test", classes.CANONICAL7, 3))
  monkeypatch.setattr(models, "build_model", lambda cfg, n: spy)
  evaluate.evaluate(tmp_path, "synthetic", write=False)
  got["evaluate"] = spy.first()[:len(source)]
  monkeypatch.undo()

  # predict: files read, fitted, normalised inside its jitted function.
  run = inference.restore(tmp_path)
  assert run.channels == channels
  spy = _Spy()
  monkeypatch.setattr(inference, "build_model", lambda cfg, n: spy)
  recs = predict.predict_paths(run, files)
  assert all(r["error"] is None for r in recs)
  got["predict"] = spy.first()

  # export: the function export_run serialises, fed as its documented loader feeds it.
  spy.seen.clear()
  names = list(export.flat_variables(run.variables))
  loaded = [np.asarray(Image.open(f).convert("RGB" if channels == 3 else "L").resize(
      (size, size), Image.BILINEAR), np.uint8).reshape(size, size, channels) for f in files]
  jax.jit(export.inference_fn(run, names))(list(export.flat_variables(run.variables).values()),
                                           np.stack(loaded))
  got["export"] = spy.first()

  # Rows: grey, grey, rgb in train/evaluate; grey, rgb in predict/export.
  for path in ("train", "evaluate"):
    np.testing.assert_array_equal(got[path][0], got[path][1], err_msg=path)
    got[path] = got[path][[0, 2]]
  for path in ("evaluate", "predict", "export"):
    assert got[path].dtype == np.float32 and got[path].shape == (2, size, size, channels)
    np.testing.assert_array_equal(got[path], got["train"], err_msg=path)
  # ... and that input is the rule's: fit, then (x / 255 - mean) / std.
  want = np.stack([images.fit(grey, size, channels), images.fit(rgb, size, channels)])
  mean, std = (np.asarray(images.channel_stats(v, channels), np.float32) for v in (MEAN, STD))
  np.testing.assert_allclose(got["train"], (want / np.float32(255) - mean) / std,
                             rtol=1e-6, atol=1e-6)
  if channels == 1:  # luma, not the red channel the training pipeline once took
    assert not np.array_equal(want[1], images.resize(rgb, size)[..., :1])
