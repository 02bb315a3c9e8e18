"""What exists: the config files, methods, variants/ablations, datasets and config keys a
run can name, and what to say when a command line names one that does not exist.

``python -m ssfer_jax.main --list`` prints ``listing()``; ``--help`` appends it too.
"""

from __future__ import annotations

import ast
import difflib
import pathlib

import ml_collections

from ssfer_jax import algorithms, config as config_lib

METHOD_SUMMARIES = {
    "supervised": "labeled subset only (the lower reference line)",
    "full_supervised": "every training label (the upper reference line)",
    "fixmatch": "fixed confidence threshold 0.95 (Sohn et al. 2020)",
    "flexmatch": "class-wise curriculum thresholds (Zhang et al. 2021; USB's rules)",
    "freematch": "self-adaptive global x class thresholds + fairness term (Wang et al. 2023)",
    "softmatch": "truncated-Gaussian sample weights (Chen et al. 2023)",
    "adacm": "adaptive confidence margin + contrastive low-confidence loss (Li et al. 2022)",
    "dtm": "dynamic threshold module, the 2023 predecessor of DTA (no SNL)",
    "dta_snl": "this project's method: dynamic thresholds + selective negative learning",
}

DATASET_SUMMARIES = {
    "synthetic": "built-in procedurally drawn faces, 7 classes (no download; the default)",
    "rafdb": "RAF-DB basic, 7 classes",
    "affectnet7": "AffectNet manually annotated, 7 classes",
    "affectnet8": "AffectNet manually annotated, 8 classes (with contempt)",
    "fer2013": "FER2013, 48 px grey",
    "ferplus": "FERPlus majority vote, 8 (or 7) classes",
    "sfew": "SFEW 2.0 (Val is the test set)",
    "image_folder": "your own data: one folder per class under train/ and test/",
    "csv_list": "your own data: path,label CSV lists",
}


def configs_dir() -> pathlib.Path:
  """``configs/`` beside the package (a source checkout), else the current directory's."""
  here = pathlib.Path(__file__).resolve().parents[1] / "configs"
  return here if here.is_dir() else pathlib.Path("configs")


def config_files() -> dict:
  """{relative path: first docstring line} for every configs/**/*.py."""
  root = configs_dir()
  out = {}
  for path in sorted(root.rglob("*.py")):
    if path.name.startswith("_"):
      continue
    try:
      doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    except (OSError, SyntaxError, UnicodeDecodeError):
      doc = "(unreadable)"
    rel = path.relative_to(root.parent) if root.is_absolute() else path
    out[str(rel)] = doc.strip().splitlines()[0] if doc.strip() else ""
  return out


def listing() -> str:
  from ssfer_jax.data import builders

  lines = ["configs (--config=FILE[:variant]):"]
  lines += [f"  {path:<34} {doc}" for path, doc in config_files().items()]
  lines.append("methods (a bare word in the variant, e.g. --config=configs/default.py:dta_snl):")
  for name in algorithms.names():
    lines.append(f"  {name:<16} {METHOD_SUMMARIES.get(name, '')}")
  lines.append("ablations (bare words in the variant, comma-separated):")
  lines += [f"  {name:<20} {effect}" for name, effect in config_lib.ablation_effects().items()]
  lines.append("variant options (key=value): labels=N (labels per class), steps=N; some configs "
               "add their own (see each file's docstring)")
  lines.append("datasets (--config.dataset.name=...; real ones need "
               "`python -m ssfer_jax.data.prepare` first):")
  for name in ["synthetic", *builders.BUILDERS]:
    lines.append(f"  {name:<14} {DATASET_SUMMARIES.get(name, '')}")
  lines.append("--dry_run prints the resolved config and the label split without training.")
  return "\n".join(lines)


def _flag_values(argv, name):
  """Values of ``--name=V`` / ``--name V`` in ``argv``."""
  out = []
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      out.append(a.split("=", 1)[1])
    elif a == f"--{name}" and i + 1 < len(argv):
      out.append(argv[i + 1])
  return out


def _override_keys(argv):
  for a in argv:
    if a.startswith("--config.") or a.startswith("--noconfig."):
      yield a.split("=", 1)[0].split(".", 1)[1]


def methods_with_algo_key(key: str) -> list:
  return [m for m in algorithms.names() if key in algorithms.get_algorithm(m).default_config()]


def unknown_key_message(key: str, config) -> str | None:
  """Why ``config.KEY`` does not exist in ``config`` and what to do; None if it exists."""
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    if isinstance(node, ml_collections.ConfigDict) and part in node:
      node = node[part]
      continue
    if parts[0] == "algo" and i == 1:
      owners = methods_with_algo_key(part)
      if owners:
        return (f"config.{key}: {config.algorithm!r} has no key {part!r}; it belongs to "
                f"{', '.join(owners)}: choose that method with the config variant, e.g. "
                f"--config=configs/default.py:{owners[0]} --config.{key}=...")
      return (f"config.{key}: {config.algorithm!r} has no key {part!r}; its keys are "
              f"{', '.join(sorted(config.algo.keys()))}")
    known = ["config." + k for k in config_lib._flat_keys(config)]
    close = difflib.get_close_matches("config." + key, known, n=1, cutoff=0.6)
    return (f"unknown config key config.{key}"
            + (f"; did you mean {close[0]}?" if close else "")
            + " (every key is in ssfer_jax/config.py; --dry_run prints the resolved config)")
  return None


def explain_override(argv) -> str | None:
  """For a failed ``--config.KEY=VALUE`` parse: the first override naming a missing key."""
  specs = _flag_values(argv, "config")
  if not specs:
    return None
  try:
    config = config_lib.load(specs[-1])
  except (FileNotFoundError, ValueError) as e:  # a missing file, a bad variant
    return " ".join(str(e).split())
  except Exception:  # noqa: BLE001 - ml_collections' own error is reported instead
    return None
  for key in _override_keys(argv):
    msg = unknown_key_message(key, config)
    if msg:
      return "--config." + msg.removeprefix("config.") if msg.startswith("config.") else msg
  return None
