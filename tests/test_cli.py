"""The command lines as a user meets them: one-line errors, a refused foreign workdir, the
catalogue, the dry run, what a run records about itself (run_info.json, TensorBoard)."""

import hashlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import TINY_FLAGS, tiny_config
from ssfer_jax import cli, outputs, train
from ssfer_jax.tools import convert, evaluate, export, predict, report

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, env=None):
  """Runs ``python <args>`` from the repository root; (exit code, stdout, stderr)."""
  res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                       timeout=300, env=dict(os.environ, **(env or {})))
  return res.returncode, res.stdout, res.stderr


def _one_error_line(rc, err, *needles):
  assert rc == 2, err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  for needle in needles:
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needles", [
    (["--config=configs/default.py", "--config.train.num_step=5"],
     ["config.train.num_step", "did you mean config.train.num_steps"]),
    (["--config=configs/default.py:dta_snll"], ["unknown variant", "dta_snll", "dta_snl"]),
    (["--config=configs/default.py", "--config.algo.use_snl=False"],
     ["config.algo.use_snl", "'fixmatch' has no key", "dta_snl, dtm", "configs/default.py:dta_snl"]),
    (["--config=configs/nope.py"], ["configs/nope.py not found"]),
    (["--config=configs/default.py", "--config.train.num_steps=abc"],
     ["--config.train.num_steps=abc"]),
    (["--config=configs/default.py", "--workdri=x"], ["workdri", "workdir"]),
])
def test_main_user_errors_are_one_line(args, needles, tmp_path):
  rc, _, err = _cli("-m", "ssfer_jax.main", *args, f"--workdir={tmp_path / 'w'}")
  _one_error_line(rc, err, *needles)
  assert not (tmp_path / "w").exists()


def test_verbose_brings_the_traceback_back(tmp_path):
  rc, _, err = _cli("-m", "ssfer_jax.main", "--config=configs/default.py:dta_snll",
                    f"--workdir={tmp_path}", env={"SSFER_DEBUG": "1"})
  assert rc != 0 and "Traceback" in err


def test_missing_workdir_and_config_are_named():
  rc, _, err = _cli("-m", "ssfer_jax.main", "--config=configs/default.py")
  _one_error_line(rc, err, "--workdir is required")
  rc, _, err = _cli("-m", "ssfer_jax.main", "--workdir=/tmp/x")
  _one_error_line(rc, err, "--config is required")


def test_prepare_and_bench_user_errors_are_one_line(tmp_path):
  rc, _, err = _cli("-m", "ssfer_jax.data.prepare", "--dataset=rafdb",
                    f"--manual_dir={tmp_path / 'missing'}", f"--data_dir={tmp_path / 'd'}")
  _one_error_line(rc, err, str(tmp_path / "missing"))
  rc, _, err = _cli("-m", "ssfer_jax.data.prepare", "--dataset=rafdbx")
  _one_error_line(rc, err, "rafdbx")
  rc, _, err = _cli("-m", "ssfer_jax.data.splits", "--dataset=synthetic", "--protocol=per_class",
                    "--labels_per_class=5000", f"--out={tmp_path / 's.json'}")
  _one_error_line(rc, err, "class 0 (neutral)", "5000")
  rc, _, err = _cli("bench/input_pipeline.py", "--sizes")
  _one_error_line(rc, err, "--sizes")
  rc, _, err = _cli("bench/compare_methods.py", "--methods=foo")
  _one_error_line(rc, err, "foo")
  rc, _, err = _cli("bench/ablation_dta_snl.py", "--seeds=x")
  _one_error_line(rc, err, "--seeds")


@pytest.mark.parametrize("module, argv, needle", [
    (predict, ["--workdir={missing}", "x.jpg"], "config.json not found"),
    (evaluate, ["--workdir={missing}", "--dataset=synthetic"], "config.json not found"),
    (export, ["--workdir={missing}", "--output={tmp}/e"], "config.json not found"),
    (report, ["{missing}"], "no such run directory"),
    pytest.param(convert, ["--input={missing}.pth", "--output={tmp}/c", "--arch=resnet18"],
                 "no such file", marks=pytest.mark.skipif(
                     importlib.util.find_spec("torch") is None,
                     reason="without torch, convert stops first at the missing PyTorch")),
    (predict, ["--workdir={missing}", "--out=x.txt", "x.jpg"], "use a .csv or .json"),
    (evaluate, ["--dataset=synthetic"], "--workdir is required"),
    (export, ["--output={tmp}/e", "stray"], "unexpected arguments: stray"),
    (report, ["--out={tmp}/r.html"], "the following arguments are required: RUN"),
    (convert, ["--input=a.pth", "--output={tmp}/c", "--arch=resnet99"], "<resnet18|resnet50>"),
    (predict, ["--min_face=0", "x.jpg"], "--min_face=0.0: must be in (0, 1]"),
    (evaluate, ["--workdir=w", "--dataset=ferplus", "--num_classes=6"], "<7|8>"),
    (report, ["--titel=x", "r"], "Did you mean: title"),
])
def test_tool_user_errors_are_one_line(module, argv, needle, tmp_path, capsys):
  argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in argv]
  try:
    rc = module.main(argv)
  except SystemExit as e:  # flag errors exit from cli.parse
    rc = e.code
  _one_error_line(rc, capsys.readouterr().err, needle)


def test_tools_have_their_own_flags_reset_on_every_call(tmp_path, capsys):
  """Tools sharing flag names (--out, --workdir) live in one process; main() runs again and
  again from the defaults, as the in-process tests and a notebook call it."""
  assert predict.FLAGS is not report.FLAGS and "out" in predict.FLAGS and "out" in report.FLAGS
  missing = str(tmp_path / "missing")
  assert report.main([missing, "--title=first"]) == 2
  assert report.FLAGS["title"].value == "first"
  assert report.main([missing]) == 2
  assert report.FLAGS["title"].value == "ssfer_jax report"  # not the previous call's
  assert predict.main([f"--workdir={missing}", "--detect_faces", "x.jpg"]) == 2
  assert predict.main([f"--workdir={missing}", "x.jpg"]) == 2
  assert predict.FLAGS["detect_faces"].value is False
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    report.main([missing, "--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m ssfer_jax.tools.report [flags] RUN [RUN ...]")
  assert report.__doc__.strip().splitlines()[0] in out
  assert "--title: the report's heading" in out and "(default: 'report.html')" in out


def test_unexpected_errors_say_so():
  msg = cli.one_line(ZeroDivisionError("division by zero"))
  assert "unexpected ZeroDivisionError" in msg and "SSFER_DEBUG=1" in msg
  assert cli.one_line(KeyError("config.json")) == "config.json"


def _tree_digest(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_workdir_of_another_run_is_refused_and_left_unchanged(tmp_path):
  config = tiny_config("fixmatch", **{"train.num_steps": 2, "train.eval_every": 2,
                                      "train.checkpoint_every": 2})
  train.run(config, tmp_path)
  before = _tree_digest(tmp_path)
  other = tiny_config("dta_snl", **{"train.num_steps": 2})
  with pytest.raises(ValueError, match=r"holds a different run.*algorithm 'fixmatch' -> "
                                       r"'dta_snl'.*new --workdir"):
    train.run(other, tmp_path)
  bigger = tiny_config("fixmatch", **{"train.num_steps": 2, "model.backbone": "resnet18"})
  with pytest.raises(ValueError, match=r"model.backbone 'small_cnn' -> 'resnet18'"):
    train.run(bigger, tmp_path)
  lr = tiny_config("fixmatch", **{"train.num_steps": 4, "optim.lr": 1e-3})
  with pytest.raises(ValueError, match=r"optim.lr 0.0005 -> 0.001.*allow_config_change=True"):
    train.run(lr, tmp_path)
  assert _tree_digest(tmp_path) == before  # byte for byte
  # Free keys (schedule length, logging) resume silently; hyper-parameters when allowed.
  lr.train.allow_config_change = True
  summary = train.run(lr, tmp_path)
  assert summary["num_steps"] == 4
  old = json.loads((tmp_path / "config.previous.json").read_text())
  assert old["optim"]["lr"] == 5e-4
  assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 1e-3


def test_resume_conflicts_classifies_keys():
  a = json.loads(tiny_config("fixmatch").to_json_best_effort())
  b = json.loads(tiny_config("fixmatch", **{"train.num_steps": 99, "data.num_workers": 2,
                                            "data.split_seed": 3, "algo.tau": 0.9}
                             ).to_json_best_effort())
  identity, hyper = outputs.resume_conflicts(a, b)
  assert identity == [("data.split_seed", 0, 3)]
  assert hyper == [("algo.tau", 0.95, 0.9)]


def test_list_and_dry_run(tmp_path):
  rc, out, err = _cli("-m", "ssfer_jax.main", "--list")
  assert rc == 0, err
  for needle in ("configs/default.py", "dta_snl", "flexmatch", "no_snl", "rafdb", "synthetic"):
    assert needle in out
  rc, out, err = _cli("-m", "ssfer_jax.main", "--config=configs/default.py:dta_snl", "--dry_run",
                      *TINY_FLAGS)
  assert rc == 0, err
  assert '"algorithm": "dta_snl"' in out
  assert "28 labeled" in out and "212 unlabeled" in out  # 4 per class x 7 classes of 240
  rows = [line.split() for line in out.splitlines() if line.startswith("  happiness")]
  assert rows and rows[-1][-1] == "4"


def test_a_run_records_its_provenance_and_tensorboard_content(tmp_path, capsys):
  config = tiny_config("dta_snl", **{"train.num_steps": 4, "train.eval_every": 2})
  train.run(config, tmp_path)
  out = capsys.readouterr().out
  assert "ssfer_jax: dta_snl on synthetic" in out and "(new run)" in out
  assert "eval step 2/4: teacher top-1" in out and "eval step 4/4" in out
  assert "disgust" in out.split("final test accuracy")[1]  # the per-class table
  assert f"report: {tmp_path}/report.html" in out
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert info["versions"]["jax"] and info["versions"]["flax"] and info["devices"]["num_devices"]
  assert "command_line" in info and "git_commit" in info
  html = (tmp_path / "report.html").read_text()
  assert "Provenance" in html and info["versions"]["jax"] in html
  tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
  acc = tb.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "tensors": 0})
  acc.Reload()
  tags = acc.Tags()
  assert {"eval_teacher/confusion", "algo/thresholds"} <= set(tags["images"])
  assert "config/text_summary" in tags["tensors"]
  plugins = acc.PluginTagToContent("hparams")
  assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins


def test_predict_warns_for_a_synthetic_run():
  config = tiny_config("fixmatch")
  assert "not a facial-expression model" in predict.synthetic_warning(config)
  config.dataset.name = "rafdb"
  assert predict.synthetic_warning(config) is None


def test_implementation_keys_do_not_block_a_resume():
  """A run written before model.batch_norm / model.max_pool existed, or with another value
  of them, resumes: they change float rounding, not what the run is."""
  new = json.loads(tiny_config("fixmatch").to_json_best_effort())
  old = json.loads(tiny_config("fixmatch", **{"model.max_pool": "xla"}).to_json_best_effort())
  del old["model"]["batch_norm"]
  assert outputs.resume_conflicts(old, new) == ([], [])
  other = json.loads(tiny_config("fixmatch", **{"model.head_dropout": 0.1}).to_json_best_effort())
  assert outputs.resume_conflicts(other, new)[0] == [("model.head_dropout", 0.1, 0.5)]
