"""The steady-state training loop copies nothing from the device to the host except at
the logging / eval / checkpoint interval.

``train.run`` executes its per-step part (next batch, put on the mesh by the pipeline,
the jitted step, the on-device metric accumulation) under
``jax.transfer_guard_device_to_host(config.train.transfer_guard)``; these tests run the
real loop with that level at its default, "disallow". On GPU/TPU that guard alone makes any
transfer raise. On CPU, jax never enforces it (host and device memory are the same,
``np.asarray`` of a CPU array is not a "transfer"), so the tests also make every
device -> host read of a ``jax.Array`` (``np.asarray``, ``float``/``int``/``bool``,
``.item()``/``.tolist()``, ``jax.device_get``: all go through ``ArrayImpl._value``)
raise while the guard level in force is "disallow". A negative control checks that an
injected per-step read is caught.
"""

import jax
import pytest
from jax._src import array as jax_array
from jax._src import config as jax_config

from conftest import tiny_config
from ssfer_jax import train


class DeviceToHostInStep(AssertionError):
  pass


@pytest.fixture
def strict_steps(monkeypatch):
  """Makes device -> host reads raise under the 'disallow' guard (on every backend; the
  loop's per-step guard is 'disallow' by default). Returns a dict counting the reads that
  were allowed."""
  counts = {"allowed_reads": 0}
  original = jax_array.ArrayImpl._value

  def guarded_value(self):
    if jax_config.transfer_guard_device_to_host.value == "disallow":
      raise DeviceToHostInStep(f"device -> host read of a {self.dtype}{list(self.shape)} "
                               "array inside the per-step part of the training loop")
    counts["allowed_reads"] += 1
    return original.fget(self)

  monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(guarded_value))
  return counts


def test_guard_catches_a_read_on_this_backend(strict_steps):
  x = jax.numpy.arange(3) + 1
  with jax.transfer_guard_device_to_host("disallow"):
    with pytest.raises(Exception):   # DeviceToHostInStep on CPU, jax's own error elsewhere
      float(x[0])
  assert int(x[0]) == 1              # outside the guard: allowed
  assert strict_steps["allowed_reads"] >= 1


def test_dta_snl_loop_reads_only_at_logging_steps(strict_steps, tmp_path):
  """The real loop, the project's method, 8 devices: runs to the end with the guard on
  every step, while logging / eval / checkpoints (outside it) do read."""
  config = tiny_config("dta_snl", **{"train.num_steps": 6, "train.log_every": 3,
                                     "train.eval_every": 6, "train.checkpoint_every": 6,
                                     "mesh.num_devices": 0})
  summary = train.run(config, tmp_path)
  assert summary["num_steps"] == 6
  assert strict_steps["allowed_reads"] > 0, "logging must still read its metrics"
  rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert sum('"kind": "train"' in r for r in rows) == 2


def test_a_read_inside_the_step_part_is_caught(strict_steps, tmp_path, monkeypatch):
  """Negative control: a per-step ``float(loss)`` (a classic hidden sync) fails the run."""
  accumulate = train._accumulate

  def leaky(acc, metrics, step):
    float(metrics["loss"])
    return accumulate(acc, metrics, step)

  monkeypatch.setattr(train, "_accumulate", leaky)
  config = tiny_config("fixmatch", **{"train.num_steps": 2, "train.log_every": 2})
  with pytest.raises(Exception, match="per-step part|[Dd]isallowed device-to-host"):
    train.run(config, tmp_path)


def test_the_guard_level_is_the_configs(strict_steps, tmp_path, monkeypatch):
  """With ``config.train.transfer_guard='allow'`` the same per-step read goes through: the
  loop applies the configured level, not a fixed one."""
  accumulate = train._accumulate
  reads = {"n": 0}

  def leaky(acc, metrics, step):
    reads["n"] += 1
    float(metrics["loss"])
    return accumulate(acc, metrics, step)

  monkeypatch.setattr(train, "_accumulate", leaky)
  config = tiny_config("fixmatch", **{"train.num_steps": 2, "train.log_every": 2,
                                      "train.transfer_guard": "allow"})
  assert train.run(config, tmp_path)["num_steps"] == 2
  assert reads["n"] == 2
