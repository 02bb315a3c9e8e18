"""config.train.xla_cpu_options: CPU-only, applied per executable, same loss on every path."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest

from conftest import tiny_config
from ssfer_jax import parallel, train, xla_options
from ssfer_jax.data import pipeline

YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
AVX512 = frozenset({"fma", "avx2", "avx512f", "avx512_bf16"})
AVX2 = frozenset({"fma", "avx2"})


@pytest.mark.parametrize("value", ["auto", "default", "eigen", "{'xla_cpu_enable_fast_math': True}"])
@pytest.mark.parametrize("platform", ["gpu", "tpu", "cuda", "rocm"])
def test_no_options_off_cpu(value, platform):
  name, options = xla_options.resolve(value, platform, flags=AVX512)
  assert options == {}
  assert name.startswith("none")


def test_auto_rule_by_instruction_set():
  # AVX-512 and AVX2 machines both switch YNNPACK off: measured faster on both (the rule's comment).
  assert xla_options.resolve("auto", "cpu", flags=AVX512) == ("eigen (auto: avx512f)", YNN_OFF)
  assert xla_options.resolve("auto", "cpu", flags=AVX2) == ("eigen (auto: avx2)", YNN_OFF)
  # Not measured (no AVX2, or aarch64's 'Features' line): XLA's own choice.
  assert xla_options.resolve("auto", "cpu", flags=frozenset({"sse4_2"})) == (
      "default (auto: other)", {})
  assert xla_options.resolve("auto", "cpu", flags=frozenset({"asimd", "sve"}))[1] == {}


def test_explicit_values():
  assert xla_options.parse("default") == ("default", {})
  assert xla_options.parse("eigen") == ("eigen", YNN_OFF)
  # Raw options in either spelling; a preset's options get the preset's name.
  assert xla_options.parse("{'xla_cpu_experimental_ynn_fusion_type': ''}") == ("eigen", YNN_OFF)
  name, options = xla_options.parse("xla_cpu_enable_fast_math=true;xla_cpu_use_xnnpack=0")
  assert options == {"xla_cpu_enable_fast_math": True, "xla_cpu_use_xnnpack": 0}
  assert xla_options.parse("xla_cpu_experimental_ynn_fusion_type=A,B")[1] == {
      "xla_cpu_experimental_ynn_fusion_type": "A,B"}
  assert name.startswith("custom ")
  for bad in ("fastest", "{'a': ", "=1", "['xla_cpu_enable_fast_math']"):
    with pytest.raises(ValueError, match="config.train.xla_cpu_options"):
      xla_options.parse(bad)
  with pytest.raises(ValueError, match="config.train.xla_cpu_options"):   # a typo fails on GPU too
    xla_options.resolve("eigne", "gpu")


def test_unknown_option_falls_back_with_a_logged_line(caplog):
  with caplog.at_level(logging.WARNING):
    name, options = xla_options.check_supported("custom", {"xla_cpu_no_such_option": True})
  assert options == {} and name.startswith("default (fallback")
  assert "xla_cpu_no_such_option" in caplog.text
  # A value XLA's enum does not know is rejected the same way.
  assert xla_options.check_supported(
      "x", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"})[1] == {}
  assert xla_options.check_supported("eigen", YNN_OFF) == ("eigen", YNN_OFF)


def _first_step(value, state=None):
  """(path, compiled HLO, metrics, initial state) of the first train step under ``value``.
  ``state``: the initial state to reuse (the init function has no compile options, so it
  is the same under every path; building it once saves a compile)."""
  config = tiny_config("dta_snl", **{"train.xla_cpu_options": value})
  t = train.Trainer(config, "/tmp/ssfer_unused_workdir", devices=jax.devices()[:1])
  host = next(pipeline.TrainBatches(t.train_data, config, t.algorithm))
  state = t.fresh_state() if state is None else state
  batch = parallel.global_batch(host, t.batch_sharding)
  compiled = t.train_step.lower(state, batch).compile()   # the Trainer's jit, its options
  _, metrics = compiled(jax.tree.map(lambda x: x.copy(), state), batch)   # the step donates
  return t.xla_cpu_path, compiled.as_text(), jax.device_get(metrics), state


def test_paths_compile_differently_and_give_the_same_loss():
  path_d, hlo_d, m_d, state = _first_step("default")
  path_e, hlo_e, m_e, _ = _first_step("eigen", state)
  assert (path_d, path_e) == ("default", "eigen")
  # The option reaches the Trainer's executable: XLA's default sends the convolutions to
  # YNNPACK fusions, the eigen path has none.
  assert "ynn_fusion" in hlo_d and "ynn_fusion" not in hlo_e
  assert float(m_d["loss"]) > 0
  for key in ("loss", "sup_loss", "unsup_loss", "mask_rate"):
    if key in m_d:
      np.testing.assert_allclose(m_e[key], m_d[key], rtol=1e-5, atol=1e-6, err_msg=key)
