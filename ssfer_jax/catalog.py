"""What exists: the config files, methods, variants/ablations and datasets a run can name.

``python -m ssfer_jax.main --list`` prints ``listing()``; ``--help`` appends it too.
"""

from __future__ import annotations

import ast
import pathlib

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
  from ssfer_jax import algorithms, config as config_lib
  from ssfer_jax.data import builders

  lines = ["configs (--config=FILE[:variant]):"]
  lines += [f"  {path:<34} {doc}" for path, doc in config_files().items()]
  lines.append("methods (a bare word in the variant, e.g. --config=configs/default.py:dta_snl):")
  for name in algorithms.names():
    lines.append(f"  {name:<16} {METHOD_SUMMARIES.get(name, '')}")
  lines.append("ablations (bare words in the variant, comma-separated):")
  lines += [f"  {name:<20} {effect}" for name, effect in sorted(config_lib.ABLATIONS.items())]
  lines.append("variant options (key=value): labels=N (labels per class), steps=N; some configs "
               "add their own (see each file's docstring)")
  lines.append("datasets (--config.dataset.name=...; real ones need "
               "`python -m ssfer_jax.data.prepare` first):")
  for name in ["synthetic", *builders.BUILDERS]:
    lines.append(f"  {name:<14} {DATASET_SUMMARIES.get(name, '')}")
  lines.append("--dry_run prints the resolved config and the label split without training.")
  return "\n".join(lines)
