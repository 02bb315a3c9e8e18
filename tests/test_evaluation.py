"""ssfer_jax.evaluation: the one confusion-count loop of the trainer and the evaluate CLI,
checked against counts worked by hand (padding rows of the last batch not counted, the
teacher and the student read from their own variables, an empty set gives zeros)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ssfer_jax import evaluation, models
from tests.conftest import tiny_config


class _ShiftModel:
  """Stands in for the network: example k (every pixel k * 10) is predicted as class
  (k + offset) % 3, ``offset`` being the network's only parameter."""

  def apply(self, variables, x, train=False, **kwargs):
    k = jnp.round(x[:, 0, 0, 0] * 255 / 10).astype(jnp.int32)   # mean 0, std 1: x = k*10/255
    pred = (k + variables["params"]["offset"]) % 3
    return {"logits": jnp.eye(3, dtype=jnp.float32)[pred]}


def _data():
  k = np.array([0, 1, 2, 1, 1])
  images = np.broadcast_to((k * 10).astype(np.uint8)[:, None, None, None], (5, 4, 4, 3)).copy()
  labels = np.array([0, 1, 2, 0, 1], np.int32)
  return images, labels


def test_run_confusions_hand_computed(monkeypatch):
  config = tiny_config("supervised")
  config.data.mean, config.data.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  config.mesh.num_devices = 2
  config.eval.batch_size = 4  # 5 examples: the second batch has 3 padding rows (example 0)
  monkeypatch.setattr(models, "build_model", lambda cfg, n: _ShiftModel())
  teacher = {"params": {"offset": jnp.int32(0)}}
  student = {"params": {"offset": jnp.int32(1)}}
  images, labels = _data()
  cms = evaluation.run_confusions(config, 3, teacher, student, images, labels)
  # teacher predicts k = [0, 1, 2, 1, 1] for y = [0, 1, 2, 0, 1];
  # student predicts k + 1 mod 3 = [1, 2, 0, 2, 2].
  assert cms["teacher"].tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
  assert cms["student"].tolist() == [[0, 1, 1], [0, 0, 2], [1, 0, 0]]
  config.eval.batch_size = 2  # other batching, same counts
  again = evaluation.run_confusions(config, 3, teacher, student, images, labels)
  for net in evaluation.NETS:
    np.testing.assert_array_equal(again[net], cms[net])
  empty = evaluation.run_confusions(config, 3, teacher, student, images[:0], labels[:0])
  assert {net: cm.tolist() for net, cm in empty.items()} == {
      net: [[0] * 3] * 3 for net in evaluation.NETS}
