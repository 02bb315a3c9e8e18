"""Which evaluation a run reports as its best, and on what data that choice was made.

Ada-CM, DTM and USB report the best *test* accuracy over the evaluations of a run: the
model is selected on the test set (SPEC §2.2). ``summary.json`` keeps that number, under
``best_top1`` / ``best_step`` with ``best_selected_on: "test"``, for comparison with them.
With ``config.eval.val_fraction`` > 0 a stratified part of the training set is held out
(``data/splits.py``), evaluated at every evaluation (``eval/step_N.json`` key ``val``), and
the step with the best held-out top-1 (the earliest on ties) is the selected one; the test
accuracy *at that step* is the honest figure (``test_top1_at_val_best``).
"""

from __future__ import annotations

NOTE = ("best_*: best test accuracy over evaluations (model selection on the test set, as "
        "Ada-CM, DTM and USB report it); val_best_step / test_*_at_val_best: the step chosen "
        "on the held-out part of the training set (config.eval.val_fraction) and the test "
        "accuracy at that step")


def by_validation(history: dict, net: str) -> dict:
  """{step: eval record} -> the held-out selection for ``net`` ('teacher' | 'student'),
  or {} when the records carry no held-out results."""
  steps = [s for s, r in history.items() if "val" in r]
  if not steps:
    return {}
  best = max(steps, key=lambda s: (history[s]["val"][net]["top1"], -s))
  rec = history[best]
  return {"val_best_step": best, "val_top1_at_val_best": rec["val"][net]["top1"],
          "test_top1_at_val_best": rec[net]["top1"],
          "test_mean_class_acc_at_val_best": rec[net]["mean_class_acc"],
          "test_macro_f1_at_val_best": rec[net]["macro_f1"]}


def summarise(history: dict, net: str) -> dict:
  """{step: eval record} -> ``net``'s final and best results as summary.json and the
  report's headline give them: final_* at the last evaluated step, best_top1 / best_step
  (the earliest step on ties) and best_mean_class_acc over all evaluations (selected on
  the test set), plus ``by_validation`` where the records carry held-out results."""
  final_step = max(history)
  best_step = max(history, key=lambda s: (history[s][net]["top1"], -s))
  final = history[final_step][net]
  return {"final_top1": final["top1"], "final_mean_class_acc": final["mean_class_acc"],
          "final_macro_f1": final["macro_f1"], "best_top1": history[best_step][net]["top1"],
          "best_step": best_step,
          "best_mean_class_acc": max(r[net]["mean_class_acc"] for r in history.values()),
          "best_selected_on": "test", **by_validation(history, net)}
