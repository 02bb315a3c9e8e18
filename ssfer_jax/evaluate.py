"""Evaluate a trained run (teacher and student) on any dataset the project can load.

    python -m ssfer_jax.evaluate --workdir=RUN --dataset=NAME [--split=SPLIT] [--data_dir=DIR]
                                 [--step=N] [--num_classes=7|8 (ferplus)]

NAME is a ``config.dataset.name``: ``synthetic`` or a dataset prepared with
``python -m ssfer_jax.data.prepare`` (rafdb, affectnet7, affectnet8, fer2013, ferplus,
sfew, image_folder, csv_list). ``--data_dir`` defaults to the run's
``config.dataset.data_dir``; ``--split`` to the dataset's test split (AffectNet and
SFEW: ``validation``; synthetic: ``test``, or ``train``). Evaluating on the run's own
dataset keeps the run's dataset settings (synthetic seed and sizes, builder options).

Labels are matched through the canonical class order (``ssfer_jax/data/classes.py``):
a class name of the test set and of the model are the same class when they name the
same canonical class (``classes.SYNONYMS``, so ``Happy`` = ``happiness``); names
outside the canonical set are matched case-insensitively by name. Then

* a test example whose class the model does not have (e.g. contempt in AffectNet-8
  when the model was trained on RAF-DB's 7 classes) is **dropped and counted**
  (``dropped`` in the output, per class);
* a model class the test set lacks (e.g. contempt for an AffectNet-8 model on RAF-DB)
  stays a possible prediction (the network's arg-max is not altered): such
  predictions are errors, counted per class (``predictions_into_absent_classes``);
  the class is listed under ``model_classes_without_test_examples`` and is left out of
  the mean per-class accuracy and macro-F1 (which average over classes with test
  examples, as ``metrics.classification_metrics`` does for the trainer).

Computation: the checkpoint's network weights are restored with
``predict.restore`` (partial orbax restore: nothing else is read), the test images
are decoded and resized exactly as the trainer does (``pipeline.eval_arrays``), and
the confusion matrices come from the trainer's own jitted ``step.make_eval_step`` on
the run's mesh (``config.mesh``) with ``config.eval.batch_size``, so evaluating the
run's final checkpoint on its own test split reproduces ``summary.json``'s final
numbers exactly.

Writes RUN/cross_eval/<dataset>_<split>/: ``results.json`` (top-1, mean per-class
accuracy, macro-F1, per-class precision / recall / support, confusion matrices, the
label mapping and the counts above, for teacher and student) and
``confusion_teacher.png`` / ``confusion_student.png``; prints a summary.
Exit status: 0 done, 2 bad arguments, run or dataset.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging as absl_logging
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from ssfer_jax import metrics as metrics_lib
from ssfer_jax import parallel, plots, predict, rundir
from ssfer_jax import step as step_lib
from ssfer_jax.data import classes, pipeline
from ssfer_jax.data.sources import load_dataset
from ssfer_jax.state import TrainState

NETS = ("teacher", "student")


# -- label mapping ---------------------------------------------------------------------
def class_key(name: str):
  """What identifies a class across datasets: its canonical index when the name is a
  canonical class or synonym, else its lower-cased name."""
  low = str(name).strip().lower()
  if low in classes.SYNONYMS:
    return ("canonical", classes.SYNONYMS[low])
  return ("name", low)


@dataclasses.dataclass
class LabelMap:
  """How the test set's label indices map onto the model's."""
  test_names: tuple
  model_names: tuple
  test_to_model: np.ndarray     # (num test classes,) model index, -1 = the model lacks it

  @property
  def test_only(self) -> list:
    """Test classes the model does not have (their examples are dropped)."""
    return [n for n, m in zip(self.test_names, self.test_to_model) if m < 0]

  @property
  def model_only(self) -> list:
    """Model classes that are not in the test set's label set."""
    mapped = set(int(m) for m in self.test_to_model if m >= 0)
    return [n for i, n in enumerate(self.model_names) if i not in mapped]

  def as_dict(self) -> dict:
    return {t: (self.model_names[m] if m >= 0 else None)
            for t, m in zip(self.test_names, self.test_to_model)}


def map_labels(test_names: Sequence[str], model_names: Sequence[str]) -> LabelMap:
  """Matches test classes to model classes by ``class_key``. Raises when the two share
  no class, or when two classes on one side mean the same class."""
  model_index = {}
  for i, n in enumerate(model_names):
    k = class_key(n)
    if k in model_index:
      raise ValueError(f"model classes {model_names[model_index[k]]!r} and {n!r} mean the same "
                       "class; the run's class names are ambiguous")
    model_index[k] = i
  test_keys = [class_key(n) for n in test_names]
  if len(set(test_keys)) != len(test_keys):
    raise ValueError(f"test class names {list(test_names)} name one class twice")
  mapping = np.asarray([model_index.get(k, -1) for k in test_keys], np.int32)
  if not (mapping >= 0).any():
    raise ValueError(f"the test set's classes {list(test_names)} share no class with the "
                     f"model's {list(model_names)}; nothing can be evaluated")
  return LabelMap(tuple(test_names), tuple(model_names), mapping)


def apply_label_map(labels: np.ndarray, label_map: LabelMap):
  """-> (kept positions, model-index labels of the kept examples, {test class: dropped})."""
  labels = np.asarray(labels, np.int64)
  if len(labels) and (labels.min() < 0 or labels.max() >= len(label_map.test_names)):
    raise ValueError(f"test labels span [{labels.min()}, {labels.max()}] but the dataset "
                     f"declares {len(label_map.test_names)} classes")
  mapped = label_map.test_to_model[labels] if len(labels) else np.zeros(0, np.int32)
  keep = np.flatnonzero(mapped >= 0)
  dropped = {n: int(np.sum(labels == i)) for i, n in enumerate(label_map.test_names)
             if label_map.test_to_model[i] < 0}
  return keep, mapped[keep].astype(np.int32), dropped


# -- data ------------------------------------------------------------------------------
def dataset_config(run_config, dataset: str, data_dir: str | None = None,
                   split: str | None = None, num_classes: int | None = None):
  """The run's config with its dataset fields pointed at ``dataset`` (a copy).

  The run's own dataset keeps its builder options; another dataset starts from none.
  ``split`` other than train becomes ``builder_kwargs.test_split`` for prepared datasets.
  """
  cfg = ml_collections.ConfigDict(copy.deepcopy(run_config.to_dict()))
  same = dataset == run_config.dataset.name
  cfg.dataset.name = dataset
  if data_dir is not None:
    cfg.dataset.data_dir = str(data_dir)
  kw = dict(run_config.dataset.get("builder_kwargs", None) or {}) if same else {}
  if num_classes:
    kw["num_classes"] = int(num_classes)
  if split and split != "train" and dataset != "synthetic":
    kw["test_split"] = split
  cfg.dataset.builder_kwargs = ml_collections.ConfigDict(kw)
  return cfg


def load_split(cfg, split: str | None):
  """-> (source, split name, class names, channels) of one split of cfg.dataset."""
  if cfg.dataset.name == "synthetic" and split not in (None, "test", "train"):
    raise ValueError(f"--split={split}: the synthetic dataset has the splits test and train")
  ds = load_dataset(cfg)
  if split == "train":
    source, name = ds.train, "train"
  else:
    source, name = ds.test, getattr(ds.test, "split", None) or split or "test"
  return source, name, tuple(ds.class_names), ds.channels


def test_arrays(source, image_size: int, source_channels: int, model_channels: int):
  """Decoded, resized test images as the trainer makes them (``pipeline.eval_arrays``);
  an RGB dataset for a grey model is converted by luma (``predict.to_channels``)."""
  if source_channels == model_channels or model_channels == 3:
    return pipeline.eval_arrays(source, image_size, model_channels)
  images = np.stack([pipeline.fit_image(predict.to_channels(
      np.asarray(pipeline.fit_image(source[i]["image"], image_size, 3)), 1), image_size, 1)
      for i in range(len(source))]) if len(source) else np.zeros((0, image_size, image_size, 1),
                                                                   np.uint8)
  return images, np.asarray(source.labels, np.int32)


# -- computation -----------------------------------------------------------------------
def eval_mesh(config):
  """The run's mesh (config.mesh) when this machine can hold it with
  config.eval.batch_size divisible; else one device (same counts, maybe a last-bit
  different logit)."""
  n = int(config.mesh.num_devices)
  devices = jax.devices()[:n] if n else jax.devices()
  if len(devices) == (n or len(devices)) and config.eval.batch_size % len(devices) == 0:
    try:
      return parallel.make_mesh(config.mesh, devices)
    except ValueError:
      pass
  one = ml_collections.ConfigDict({"fsdp": 1})
  return parallel.make_mesh(one, jax.devices()[:1])


def confusions(config, num_classes: int, teacher: dict, student: dict, images, labels) -> dict:
  """{'teacher': (C, C), 'student': (C, C)} confusion counts (rows true) from the
  trainer's ``step.make_eval_step``, batched as ``Trainer.evaluate`` batches."""
  from ssfer_jax.models import build_model
  mesh = eval_mesh(config)
  replicated = NamedSharding(mesh, P())
  batch_sharding = parallel.batch_sharding(mesh)
  state = TrainState(step=None, params=student["params"],
                     batch_stats=student.get("batch_stats", {}),
                     ema_params=teacher["params"], ema_batch_stats=teacher.get("batch_stats", {}),
                     opt_state=None, rng=None, algo=None)
  state = jax.device_put(state, replicated)
  model = build_model(config.model, num_classes)
  eval_step = jax.jit(step_lib.make_eval_step(model, config, num_classes),
                      in_shardings=(replicated,) + (batch_sharding,) * 3, out_shardings=replicated)
  totals = None
  for x, y, valid in pipeline.eval_batches(images, labels, config.eval.batch_size):
    b = parallel.global_batch({"x": x, "y": y, "valid": valid}, batch_sharding)
    out = eval_step(state, b["x"], b["y"], b["valid"])
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:
    return {net: np.zeros((num_classes, num_classes)) for net in NETS}
  return {net: np.asarray(cm) for net, cm in jax.device_get(totals).items()}


def net_results(confusion, label_map: LabelMap) -> dict:
  """``classification_metrics`` plus per-class dicts and the predictions that went to
  model classes without test examples."""
  m = metrics_lib.classification_metrics(confusion)
  cm = np.asarray(m["confusion"])
  names = label_map.model_names
  absent = [i for i, s in enumerate(m["support"]) if s == 0]
  m["per_class"] = {n: {"precision": m["per_class_precision"][i],
                        "recall": m["per_class_recall"][i] if m["support"][i] else None,
                        "support": m["support"][i], "predicted": int(cm[:, i].sum())}
                    for i, n in enumerate(names)}
  m["predictions_into_absent_classes"] = {names[i]: int(cm[:, i].sum()) for i in absent}
  return m


def evaluate(workdir, dataset: str, *, split: str | None = None, data_dir: str | None = None,
             step: int | None = None, num_classes: int | None = None, write: bool = True) -> dict:
  """Evaluates RUN's checkpoint (latest unless ``step``) on ``dataset``; returns the
  results dict that is written to RUN/cross_eval/<dataset>_<split>/results.json."""
  workdir = epath.Path(workdir)
  runs = {net: predict.restore(workdir, step=step, weights=net) for net in NETS}
  run = runs["teacher"]
  config = run.config
  cfg = dataset_config(config, dataset, data_dir, split, num_classes)
  source, split_name, test_names, src_channels = load_split(cfg, split)
  label_map = map_labels(test_names, run.class_names)
  images, labels = test_arrays(source, run.image_size, src_channels, run.channels)
  keep, mapped, dropped = apply_label_map(labels, label_map)
  cms = confusions(config, len(run.class_names), runs["teacher"].variables,
                   runs["student"].variables, images[keep], mapped)
  results = {
      "workdir": str(workdir), "checkpoint_step": run.step, "dataset": dataset,
      "split": split_name, "data_dir": cfg.dataset.data_dir,
      "model_class_names": list(run.class_names), "test_class_names": list(test_names),
      "label_map": label_map.as_dict(),
      "test_classes_missing_from_model": label_map.test_only,
      "model_classes_not_in_test_label_set": label_map.model_only,
      "num_test_examples": int(len(labels)), "num_evaluated": int(len(keep)),
      "num_dropped": int(sum(dropped.values())), "dropped": dropped,
  }
  for net in NETS:
    results[net] = net_results(cms[net], label_map)
  results["model_classes_without_test_examples"] = [
      n for n, s in zip(run.class_names, results["teacher"]["support"]) if s == 0]
  if write:
    out = workdir / "cross_eval" / f"{dataset}_{split_name}"
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_json(out / "results.json", results, indent=2)
    for net in NETS:
      r = results[net]
      plots.confusion_png(r["confusion"], run.class_names, out / f"confusion_{net}.png",
                          f"{net} (step {run.step}) on {dataset}/{split_name}: top-1 "
                          f"{r['top1']:.3f}, mean per-class {r['mean_class_acc']:.3f}")
    results["output_dir"] = str(out)
  return results


def format_results(results: dict) -> str:
  """The printed summary: headline metrics, mapping notes, per-class table."""
  lines = [f"{results['workdir']} step {results['checkpoint_step']} on "
           f"{results['dataset']}/{results['split']}: {results['num_evaluated']} of "
           f"{results['num_test_examples']} examples evaluated"]
  if results["num_dropped"]:
    lines.append("  dropped (class not in the model): " + ", ".join(
        f"{n} {c}" for n, c in results["dropped"].items()))
  if results["model_classes_without_test_examples"]:
    lines.append("  model classes without test examples (predictions into them are errors): "
                 + ", ".join(results["model_classes_without_test_examples"]))
  for net in NETS:
    r = results[net]
    lines.append(f"  {net:<8} top-1 {r['top1']:.4f}  mean per-class {r['mean_class_acc']:.4f}  "
                 f"macro-F1 {r['macro_f1']:.4f}" + ("  predictions into absent classes: " + ", ".join(
                     f"{n} {c}" for n, c in r["predictions_into_absent_classes"].items())
                     if any(r["predictions_into_absent_classes"].values()) else ""))
  width = max(len(n) for n in results["model_class_names"]) + 2
  lines.append(f"  {'class':<{width}}{'support':>8}" + "".join(
      f"{net[:7] + ' P':>11}{net[:7] + ' R':>11}" for net in NETS))
  for n in results["model_class_names"]:
    row = f"  {n:<{width}}{results['teacher']['per_class'][n]['support']:>8}"
    for net in NETS:
      pc = results[net]["per_class"][n]
      rec = "-" if pc["recall"] is None else f"{pc['recall']:.3f}"
      row += f"{pc['precision']:>11.3f}{rec:>11}"
    lines.append(row)
  lines.append("  confusion matrix (teacher; rows true, columns predicted):")
  for n, row in zip(results["model_class_names"], results["teacher"]["confusion"]):
    lines.append(f"  {n:<{width}}" + "".join(f"{v:>6}" for v in row))
  if "output_dir" in results:
    lines.append(f"  wrote {results['output_dir']}/results.json, confusion_teacher.png, "
                 "confusion_student.png")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m ssfer_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a run directory (config.json + checkpoints/)")
  parser.add_argument("--dataset", required=True, help="config.dataset.name of the test data")
  parser.add_argument("--split", default=None, help="split (default: the dataset's test split)")
  parser.add_argument("--data_dir", default=None, help="prepared TFDS data (default: the run's)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--num_classes", type=int, default=None, choices=(7, 8),
                      help="ferplus only: the prepared 7- or 8-class config to read")
  args = parser.parse_args(argv)
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's info/warnings on restore
  try:
    results = evaluate(args.workdir, args.dataset, split=args.split, data_dir=args.data_dir,
                       step=args.step, num_classes=args.num_classes)
  except (ValueError, FileNotFoundError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_results(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
