"""XLA:CPU compile options for the train and eval steps: which convolution path XLA uses.

``config.train.xla_cpu_options`` picks them; ``Trainer`` passes the result to ``jax.jit(...,
compiler_options=...)`` of its train and eval steps, so they apply per executable and
never through the process-wide ``XLA_FLAGS``. They apply on CPU only: for a GPU or TPU the
resolved options are empty (``resolve``), whatever the key says.

Values of the key:

* ``'auto'`` (default): the path measured fastest for the machine's instruction set
  (``AUTO_RULE``, below; the measurements are in docs/performance.md).
* ``'default'``: XLA's own choice. In jax 0.10 XLA:CPU sends convolutions and dots to
  YNNPACK fusions (``ynn_fusion`` in a profile).
* ``'eigen'``: YNNPACK fusions off (``xla_cpu_experimental_ynn_fusion_type=''``):
  convolutions and dots run in XLA's Eigen runtime.
* a dict-like string of raw XLA options, e.g. ``"{'xla_cpu_enable_fast_math': True}"``
  or ``'xla_cpu_enable_fast_math=true;xla_cpu_experimental_ynn_fusion_type='`` (``;``
  separates options: an option's own value may hold commas, e.g. a list of fusion types).

Switching paths changes float rounding (the convolutions sum in another order), so a run
resumed under another path does not reproduce the uninterrupted run bit for bit; within one
path it does. An option this jax's XLA does not know (jax versions rename and drop the
``experimental`` ones) makes XLA refuse to compile; ``check_supported`` probes the options on
a tiny function first and falls back to XLA's default with one logged line instead.
"""

from __future__ import annotations

import ast
import functools
import logging

PRESETS = {
    "default": {},
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
}

# Instruction set -> path, from interleaved A/B runs of the dta_snl step (ResNet-18, B=2,
# U=14), docs/performance.md, "The CPU convolution path". Checked in order, first match
# wins; the flag names are /proc/cpuinfo's.
# - avx512f: measured here on a quiet machine (AMD EPYC Zen 5, jax 0.10.2, load average
#   <= 1.9 on 2 cores; two runs of 5 and 7 interleaved rounds): Eigen's path is 1.19x / 1.06x
#   faster than YNNPACK's at 112 px and 1.24x / 1.26x at 224 px (paired medians). An earlier
#   round under load 7-10 had pointed the other way; its ranking is withdrawn.
# - avx2 (no avx512f): Eigen, from issue #19's measurement on an AVX2-only machine (0.79x the
#   step time at 112 px, 0.56x at 224 px); not re-measured in this project's runs.
AUTO_RULE = (
    ("avx512f", "eigen"),
    ("avx2", "eigen"),
)
AUTO_FALLBACK = "default"   # other CPUs (no AVX2, aarch64): not measured, XLA's own choice


def cpu_flags() -> frozenset:
  """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where unreadable)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


def instruction_set(flags=None) -> str:
  """A short name of the widest x86 vector extension: 'avx512f', 'avx2' or 'other'."""
  flags = cpu_flags() if flags is None else flags
  return next((f for f, _ in AUTO_RULE if f in flags), "other")


def _parse_scalar(text: str):
  low = text.strip().lower()
  if low in ("true", "false"):
    return low == "true"
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text.strip()


def parse(value: str, flags=None) -> tuple[str, dict]:
  """config value -> (path name, XLA options). The name is what the banner shows."""
  value = (value or "").strip()
  if value == "auto":
    flags = cpu_flags() if flags is None else flags
    name = next((path for flag, path in AUTO_RULE if flag in flags), AUTO_FALLBACK)
    return f"{name} (auto: {instruction_set(flags)})", dict(PRESETS[name])
  if value in PRESETS:
    return value, dict(PRESETS[value])
  if value.startswith("{"):
    try:
      options = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"config.train.xla_cpu_options={value!r} is not a Python dict literal "
                       f"({e}); write e.g. \"{{'xla_cpu_enable_fast_math': True}}\"") from e
  elif "=" in value:
    options = {}
    for item in value.split(";"):
      key, sep, val = item.partition("=")
      if not sep or not key.strip():
        raise ValueError(f"config.train.xla_cpu_options: {item!r} is not KEY=VALUE; write "
                         "e.g. 'xla_cpu_enable_fast_math=true;xla_cpu_use_xnnpack=false'")
      options[key.strip()] = _parse_scalar(val)
  else:
    raise ValueError(f"config.train.xla_cpu_options={value!r}: use 'auto', "
                     f"{', '.join(repr(p) for p in PRESETS)}, or XLA options as "
                     "\"{'name': value}\" or 'name=value;name=value'")
  if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
    raise ValueError(f"config.train.xla_cpu_options={value!r}: expected a dict of option "
                     "names to values")
  name = next((p for p, o in PRESETS.items() if o == options), None)
  return name or "custom " + ",".join(f"{k}={v}" for k, v in sorted(options.items())), options


def resolve(value: str, platform: str, flags=None) -> tuple[str, dict]:
  """(path name, compiler options) for the step's platform: empty options off CPU."""
  if platform != "cpu":
    parse(value, flags)            # a typo in the key is still an error on a GPU
    return f"none ({platform}: CPU-only options)", {}
  return parse(value, flags)


@functools.lru_cache(maxsize=None)
def _probe(items: tuple) -> str:
  """'' if XLA:CPU compiles a tiny function with these options, else XLA's error."""
  import jax
  import numpy as np
  try:
    x = jax.device_put(np.zeros((4,), np.float32), jax.local_devices(backend="cpu")[0])
    jax.jit(lambda x: x * 2.0 + 1.0).lower(x).compile(compiler_options=dict(items))
  except Exception as e:   # XLA raises JaxRuntimeError (INVALID_ARGUMENT) for unknown options
    return f"{type(e).__name__}: {str(e).splitlines()[0]}"
  return ""


def check_supported(name: str, options: dict) -> tuple[str, dict]:
  """(name, options) if this XLA accepts them, else XLA's default with one logged line."""
  if not options:
    return name, options
  error = _probe(tuple(sorted(options.items())))
  if not error:
    return name, options
  logging.warning("config.train.xla_cpu_options: XLA:CPU rejects %s (%s); using XLA's "
                  "default path instead", options, error)
  return f"default (fallback: {name} rejected by this XLA)", {}


def for_platform(value: str, platform: str) -> tuple[str, dict]:
  """What ``Trainer`` uses: ``resolve`` then ``check_supported``."""
  return check_supported(*resolve(value, platform))
