r"""Prepares a real dataset from the user's manual download into TFDS ArrayRecord files.

    python -m ssfer_jax.data.prepare --dataset=rafdb \
        --manual_dir=/data/raw/RAF-DB/basic --data_dir=/data/tfds

TFDS shows a progress bar per split; at the end a table gives, per split, the number of
examples of every class (read back from the written records) and everything the builder
skipped, dropped, ignored (hidden files, unexpected folders) or converted. Then train with ``config.dataset.name=rafdb`` and
``config.dataset.data_dir=/data/tfds``. Datasets: see ``ssfer_jax/data/builders``. No
TensorFlow is needed (and ``tfds build`` cannot be used without it).
"""

from __future__ import annotations

import logging

import tensorflow_datasets as tfds
from absl import flags
from etils import epath

from ssfer_jax import cli
from ssfer_jax.data import builders, tfds_sources

_DATASET = flags.DEFINE_enum("dataset", None, sorted(builders.BUILDERS), "Dataset to prepare.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder of the official download.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where to write the prepared dataset.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "ferplus: 8 (default) or 7.")
_SKIP_BAD_IMAGES = flags.DEFINE_bool("skip_bad_images", False,
                                     "Skip (and count) missing, truncated or corrupt images.")
_SKIP_BAD_ROWS = flags.DEFINE_bool("skip_bad_rows", False,
                                   "Skip (and count) malformed label lines / unknown labels.")
_ALLOW_EMPTY = flags.DEFINE_bool("allow_empty_classes", False,
                                 "Accept splits where a class has no example (warned, counted).")
_VOTE = flags.DEFINE_enum("vote", None, ["majority", "plurality"], "ferplus: label rule.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Regenerate even if already prepared.")


def prepare(dataset: str, manual_dir, data_dir, *, overwrite: bool = False,
            num_classes: int | None = None, **options):
  """Builds ``dataset`` from ``manual_dir`` into ``data_dir``; returns the builder."""
  if dataset not in builders.BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(builders.BUILDERS)}")
  manual_dir = epath.Path(manual_dir)
  if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
    raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder, or is empty.\n"
                            + builders.BUILDERS[dataset][0].MANUAL_DOWNLOAD_INSTRUCTIONS)
  options = {k: v for k, v in options.items() if v is not None}
  builder = builders.builder_for(dataset, data_dir=data_dir, num_classes=num_classes, **options)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  if tfds_sources.is_prepared(builder) and not overwrite:
    logging.warning("%s is already prepared in %s; pass --overwrite to rebuild it",
                    dataset, builder.data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), download_mode=mode))
  return builder


def summary(builder) -> str:
  """Per-split, per-class counts read back from the records, and the builder's report."""
  meta = builder.info.metadata or {}
  names = list(meta.get("class_names") or builder.info.features["label"].names)
  tfds_name = tfds_sources._builder_name(builder)
  splits = sorted(builder.info.splits.keys(), key=lambda s: ("train", "validation", "test").index(s)
                  if s in ("train", "validation", "test") else 9)
  width = max(12, *(len(n) + 2 for n in names))
  lines = [f"{tfds_name} in {builder.data_dir} (test split: {meta.get('test_split')})",
           "class".ljust(width) + "".join(s.rjust(12) for s in splits)]
  counts = {}
  for s in splits:
    labels = tfds_sources.read_labels(tfds_name, str(builder.data_dir_root), s)
    counts[s] = [int((labels == c).sum()) for c in range(len(names))]
  for c, n in enumerate(names):
    lines.append(f"{c} {n}".ljust(width) + "".join(str(counts[s][c]).rjust(12) for s in splits))
  lines.append("total".ljust(width) + "".join(str(sum(counts[s])).rjust(12) for s in splits))
  reports = {"manual_dir": meta.get("layout") or {}, **(meta.get("report") or {})}
  for s, rep in reports.items():
    for event, k in rep.get("events", {}).items():
      ex = rep.get("event_examples", {}).get(event, [])
      lines.append(f"[{s}] {event}: {k}" + (f"   e.g. {ex[0]}" if ex else ""))
  return "\n".join(lines)


def main(argv):
  del argv
  for f in ("dataset", "manual_dir", "data_dir"):
    if not flags.FLAGS[f].value:
      raise cli.UserError(f"--{f} is required (python -m ssfer_jax.data.prepare --help)")
  tfds.enable_progress_bar()
  builder = prepare(_DATASET.value, _MANUAL_DIR.value, _DATA_DIR.value, overwrite=_OVERWRITE.value,
                    num_classes=_NUM_CLASSES.value, skip_bad_images=_SKIP_BAD_IMAGES.value,
                    skip_bad_rows=_SKIP_BAD_ROWS.value, allow_empty_classes=_ALLOW_EMPTY.value,
                    vote=_VOTE.value)
  print(summary(builder))


if __name__ == "__main__":
  cli.run_absl(main)
