"""Test set-up: 8 fake CPU devices (before jax is imported), quiet logs, tiny configs."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from ssfer_jax.config import base_config, set_algorithm  # noqa: E402

# The command-line twin of tiny_config's data and model sizes, for tests that run
# ``python -m ssfer_jax.main`` in a subprocess (one device).
TINY_FLAGS = ["--config.dataset.num_train=240", "--config.dataset.num_test=64",
              "--config.dataset.render_size=24", "--config.data.image_size=24",
              "--config.data.batch_size=8", "--config.data.uratio=2",
              "--config.data.labels_per_class=4", "--config.eval.batch_size=32",
              "--config.mesh.num_devices=1"]


def tiny_config(algorithm: str = "fixmatch", **overrides):
  """A config that trains in seconds: 24 px synthetic faces, a narrow CNN, small batches."""
  c = base_config()
  set_algorithm(c, algorithm)
  c.dataset.num_train = 240
  c.dataset.num_test = 64
  c.dataset.render_size = 24
  c.data.image_size = 24
  c.data.batch_size = 8
  c.data.uratio = 2
  c.data.labels_per_class = 4
  c.data.read_threads = 1
  c.data.prefetch = 2
  c.eval.batch_size = 32
  c.train.num_steps = 8
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.checkpoint_every = 4
  c.train.async_checkpoint = False
  c.train.progress = False
  c.mesh.num_devices = 1
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def restored_state(workdir, config):
  """The newest checkpoint's train state of the run in ``workdir`` (``config``'s), on the host."""
  import jax
  from ssfer_jax import checkpoint, train
  t = train.Trainer(config, workdir)
  ckpt = checkpoint.Checkpointer(workdir, keep=5, async_save=False)  # reads: keep prunes nothing
  state = ckpt.restore_state(ckpt.latest_step(), t.abstract_state)
  ckpt.close()
  return jax.device_get(state)


def network_gradients(model_cfg, x, y):
  """A network built from ``model_cfg`` (7 classes), initialised on ``x``, and its jitted
  train-mode cross-entropy on (x, y): ``(variables, (loss, updated batch_stats), grads)``,
  for comparing two implementations of a layer through the whole network."""
  import jax
  import jax.numpy as jnp
  from ssfer_jax.models import build_model
  model = build_model(model_cfg, 7)
  variables = model.init(jax.random.PRNGKey(2), x, train=False)

  def loss(params):
    out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                           train=True, mutable=["batch_stats"])
    return -jax.nn.log_softmax(out["logits"])[jnp.arange(len(y)), y].mean(), upd

  value_and_aux, grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
  return variables, value_and_aux, grads


@pytest.fixture
def tiny():
  return tiny_config


class Killed(Exception):
  """A simulated kill of the training process (``kill_after``)."""


@pytest.fixture
def kill_after(monkeypatch):
  """``kill_after(n)``: the next ``train.run`` dies with ``Killed`` when its loop asks the
  input pipeline for batch n + 1, i.e. after n steps and whatever logging / checkpoint
  they did, with no final checkpoint and no summary (what a SIGKILL leaves, less the
  in-flight async save, which closing the checkpointer completes). One shot: a later run
  in the same test (the resume) is not killed. Count from a fresh workdir."""
  from ssfer_jax import train

  original = train.Trainer.batches

  def arm(n: int):
    fetched = {"batches": 0, "armed": True}

    class Dying:
      """The run's batch iterator (a single run's or a population's), killed at batch n + 1."""

      def __init__(self, inner):
        self.inner = inner

      def __iter__(self):
        return self

      def __next__(self):
        if fetched["armed"] and fetched["batches"] == n:
          fetched["armed"] = False
          raise Killed(f"killed after step {n}")
        fetched["batches"] += 1
        return next(self.inner)

      def __getattr__(self, name):  # get_state / set_state
        return getattr(self.inner, name)

    monkeypatch.setattr(train.Trainer, "batches", lambda self: Dying(original(self)))

  return arm
