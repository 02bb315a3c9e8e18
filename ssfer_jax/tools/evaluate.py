"""Evaluate a trained run (teacher and student) on any dataset the project can load.

    python -m ssfer_jax.tools.evaluate --workdir=RUN --dataset=NAME [--split=SPLIT] [--data_dir=DIR]
                                 [--step=N] [--num_classes=7|8 (ferplus)] [--member=K]

NAME is a ``config.dataset.name``: ``synthetic`` or a dataset prepared with
``python -m ssfer_jax.data.prepare`` (rafdb, affectnet7, affectnet8, fer2013, ferplus,
sfew, image_folder, csv_list). ``--data_dir`` defaults to the run's
``config.dataset.data_dir``; ``--split`` to the dataset's test split (AffectNet and
SFEW: ``validation``; synthetic: ``test``, or ``train``). Evaluating on the run's own
dataset keeps the run's dataset settings (synthetic seed and sizes, builder options).

Labels are matched through the canonical class order (``ssfer_jax/data/classes.py``,
``map_labels``):
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
``inference.restore`` (partial orbax restore: nothing else is read), the test images
are decoded and resized exactly as the trainer does (``pipeline.eval_arrays``, so a grey
model on an RGB dataset sees luma and an RGB model on a grey one repeated grey), and
the confusion matrices come from the trainer's own evaluation loop
(``evaluation.confusion_matrices`` over the jitted ``step.make_eval_step``) on the
run's mesh (``config.mesh``) with ``config.eval.batch_size``, so evaluating the run's
final checkpoint on its own test split reproduces ``summary.json``'s final numbers
exactly.

A population run (``config.population.size`` > 1) is evaluated one member at a time:
``--member=K``, by default the member whose teacher did best on held-out validation, else
member 0 (``inference.default_member``; a stderr line says which); that member's teacher
and student are evaluated, with its own config (``population.member_config``), and the
results go to its own directory, RUN/members/<k>/, where its summary.json is.

Writes RUN/cross_eval/<dataset>_<split>/: ``results.json`` (top-1, mean per-class
accuracy, macro-F1, per-class precision / recall / support, confusion matrices, the
label mapping and the counts above, for teacher and student) and
``confusion_teacher.png`` / ``confusion_student.png``; prints a summary.
Exit status: 0 done, 2 bad arguments, run or dataset.
"""

from __future__ import annotations

import copy
import json
import sys

import ml_collections
import numpy as np
from absl import flags
from absl import logging as absl_logging
from etils import epath

from ssfer_jax import cli, evaluation, inference
from ssfer_jax import metrics as metrics_lib
from ssfer_jax import plots, rundir
from ssfer_jax.data import classes, pipeline
from ssfer_jax.data.classes import LabelMap
from ssfer_jax.data.datasets import load_dataset

NETS = evaluation.NETS


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


# -- results ---------------------------------------------------------------------------
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
             step: int | None = None, num_classes: int | None = None, write: bool = True,
             member: int | None = None) -> dict:
  """Evaluates RUN's checkpoint (latest unless ``step``; of a population run, member
  ``member``'s) on ``dataset``; returns the results dict that is written to
  RUN/cross_eval/<dataset>_<split>/results.json (RUN/members/<k>/cross_eval/...)."""
  workdir = epath.Path(workdir)
  run = inference.restore(workdir, step=step, weights="teacher", member=member)
  runs = {"teacher": run, "student": inference.restore(workdir, step=step, weights="student",
                                                       member=run.member)}
  config = run.config
  cfg = dataset_config(config, dataset, data_dir, split, num_classes)
  source, split_name, test_names, _ = load_split(cfg, split)
  label_map = classes.map_labels(test_names, run.class_names)
  images, labels = pipeline.eval_arrays(source, run.image_size, run.channels)
  keep, mapped, dropped = classes.apply_label_map(labels, label_map)
  cms = evaluation.run_confusions(config, len(run.class_names), runs["teacher"].variables,
                                  runs["student"].variables, images[keep], mapped)
  results = {
      "workdir": str(workdir), "member": run.member, "checkpoint_step": run.step,
      "dataset": dataset, "split": split_name, "data_dir": cfg.dataset.data_dir,
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
    home = workdir if run.member is None else rundir.member_dir(workdir, run.member)
    out = home / "cross_eval" / f"{dataset}_{split_name}"
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
  member = "" if results.get("member") is None else f" member {results['member']}"
  lines = [f"{results['workdir']}{member} step {results['checkpoint_step']} on "
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


FLAGS = flags.FlagValues()  # this tool's own flags: main() runs in-process next to the others
_WORKDIR = flags.DEFINE_string("workdir", None, "a run directory (config.json + checkpoints/)",
                               required=True, flag_values=FLAGS)
_DATASET = flags.DEFINE_string("dataset", None, "config.dataset.name of the test data",
                               required=True, flag_values=FLAGS)
_SPLIT = flags.DEFINE_string("split", None, "split (default: the dataset's test split)",
                             flag_values=FLAGS)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "prepared TFDS data (default: the run's)",
                                flag_values=FLAGS)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: latest)", flag_values=FLAGS)
_MEMBER = inference.define_member_flag(FLAGS)
_NUM_CLASSES = flags.DEFINE_enum("num_classes", None, ["7", "8"],
                                 "ferplus only: the prepared 7- or 8-class config to read",
                                 flag_values=FLAGS)


@cli.guard
def main(argv=None) -> int:
  cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.evaluate", __doc__)
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's info/warnings on restore
  num_classes = int(_NUM_CLASSES.value) if _NUM_CLASSES.value else None
  results = evaluate(_WORKDIR.value, _DATASET.value, split=_SPLIT.value, data_dir=_DATA_DIR.value,
                     step=_STEP.value, num_classes=num_classes, member=_MEMBER.value)
  print(format_results(results))
  return 0


if __name__ == "__main__":
  sys.exit(main())
