"""ssfer_jax.malloc: which allocator a run uses and when it re-executes under tcmalloc."""

import ctypes.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import TINY_FLAGS
from ssfer_jax import malloc

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIB = "libtcmalloc_minimal.so.4"
# Whether the loader finds tcmalloc (not $SSFER_TCMALLOC: the probes below unset it).
HAS_TCMALLOC = any(ctypes.util.find_library(n) for n in ("tcmalloc_minimal", "tcmalloc"))
NO_TCMALLOC = "no tcmalloc on this machine (apt-get install libtcmalloc-minimal4)"
GLIBC_MAPS = ("7f00-7f10 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
              "7f20-7f30 r-xp 00000000 08:01 13 /usr/lib/x86_64-linux-gnu/libm.so.6\n")


def test_loaded_names_the_mapped_allocator():
  assert malloc.loaded(GLIBC_MAPS) == "glibc"
  tc = GLIBC_MAPS + "7f40-7f50 r-xp 0 08:01 14 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
  assert malloc.loaded(tc) == "tcmalloc"
  je = GLIBC_MAPS + "7f40-7f50 r-xp 0 08:01 14 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
  assert malloc.loaded(je) == "jemalloc"
  assert malloc.loaded() in ("glibc", "tcmalloc", "jemalloc", "mimalloc", "unknown")


def test_auto_preloads_tcmalloc_and_keeps_the_users_preload_and_rate():
  env = malloc.plan("auto", {"PATH": "/bin"}, "glibc", LIB, None)
  assert env["LD_PRELOAD"] == LIB
  assert env["TCMALLOC_RELEASE_RATE"] == "0"
  assert env[malloc.REEXEC_MARK] == "" and env["PATH"] == "/bin"   # started without a preload
  env = malloc.plan("auto", {"LD_PRELOAD": "libfoo.so", "TCMALLOC_RELEASE_RATE": "2"},
                    "glibc", LIB, None)
  assert env["LD_PRELOAD"] == f"{LIB}:libfoo.so"   # tcmalloc first: it must own malloc
  assert env[malloc.REEXEC_MARK] == "libfoo.so"     # what to put back if it does not load
  assert env["TCMALLOC_RELEASE_RATE"] == "2"


@pytest.mark.parametrize("mode,now,library,plugin,marked", [
    ("system", "glibc", LIB, None, False),        # asked to leave the process as started
    ("auto", "tcmalloc", LIB, None, False),       # already under tcmalloc
    ("tcmalloc", "jemalloc", LIB, None, False),   # the user preloaded another allocator
    ("auto", "glibc", None, None, False),         # nothing to preload
    ("auto", "glibc", LIB, "jax_cuda12_plugin", False),  # the step runs on an accelerator
    ("auto", "glibc", LIB, None, True),           # re-executed once already: never loop
    ("auto", "unknown", LIB, None, False),        # no /proc: not Linux
])
def test_cases_that_go_on_as_started(mode, now, library, plugin, marked):
  environ = {malloc.REEXEC_MARK: ""} if marked else {}
  assert malloc.plan(mode, environ, now, library, plugin) is None


def test_tcmalloc_mode_is_explicit():
  # An explicit request preloads even beside an accelerator plugin ...
  assert malloc.plan("tcmalloc", {}, "glibc", LIB, "libtpu")["LD_PRELOAD"] == LIB
  # ... and says how to get the library when there is none,
  with pytest.raises(ValueError, match="apt-get install libtcmalloc-minimal4"):
    malloc.plan("tcmalloc", {}, "glibc", None, None)
  # or that the preload did not take, instead of executing again.
  with pytest.raises(ValueError, match="did not load tcmalloc"):
    malloc.plan("tcmalloc", {malloc.REEXEC_MARK: "", "LD_PRELOAD": LIB}, "glibc", LIB, None)
  with pytest.raises(ValueError, match="needs Linux"):
    malloc.plan("tcmalloc", {}, "unknown", LIB, None)
  with pytest.raises(ValueError, match="--malloc='fast' is not valid"):
    malloc.plan("fast", {}, "glibc", LIB, None)


def test_jax_platforms_cpu_hides_an_installed_plugin(monkeypatch):
  monkeypatch.setattr(malloc.importlib.util, "find_spec", lambda name: object())
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert malloc.accelerator_plugin() is None
  monkeypatch.setenv("JAX_PLATFORMS", "")
  assert malloc.accelerator_plugin() == malloc.ACCELERATOR_PLUGINS[0]


_PROBE = ("import os, sys; print('before', os.getpid(), flush=True); "
          "from ssfer_jax import malloc; malloc.reexec_if_wanted(sys.argv[1]); "
          "print('after', os.getpid(), malloc.loaded(), os.environ.get('TCMALLOC_RELEASE_RATE'), "
          "os.environ.get(malloc.REEXEC_MARK), os.environ.get('LD_PRELOAD'), sys.argv[1:])")


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", "TCMALLOC_RELEASE_RATE", malloc.REEXEC_MARK,
                      malloc.LIBRARY_ENV)}
  return dict(env, **extra)


def _probe(mode, **env):
  return subprocess.run([sys.executable, "-c", _PROBE, mode, "--x=1"], capture_output=True,
                        text=True, timeout=120, env=_clean_env(**env))


@pytest.mark.skipif(not HAS_TCMALLOC, reason=NO_TCMALLOC)
def test_reexec_runs_the_same_command_in_the_same_process_under_tcmalloc():
  out = _probe("tcmalloc")
  assert out.returncode == 0, out.stderr
  first, again, after = out.stdout.splitlines()   # the script ran twice: before and after exec
  pid = first.split()[1]
  assert again == first                                            # same pid: os.execve
  assert after.split()[:5] == ["after", pid, "tcmalloc", "0", "None"]   # children: no mark
  assert after.endswith("['tcmalloc', '--x=1']")                 # the same arguments
  out = _probe("system")
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[1].split()[2] == "glibc"         # ran once, as started
  out = _probe("auto", JAX_PLATFORMS="cpu")                        # the default, end to end
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[-1].split()[2] == "tcmalloc"


def _libc_path():
  with open("/proc/self/maps") as f:
    for line in f:
      if "/libc.so" in line or "/libc-" in line:
        return line.split()[-1]
  pytest.skip("no libc in /proc/self/maps")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux only")
def test_a_preload_that_is_not_tcmalloc_warns_once_and_is_not_inherited():
  # libc itself preloads fine but is not tcmalloc: the re-executed process is still on glibc.
  out = _probe("auto", SSFER_TCMALLOC=_libc_path(), JAX_PLATFORMS="cpu")
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 3 and lines[0] == lines[1]                 # executed once, no loop
  after = lines[2].split()
  assert after[2] == "glibc" and after[4] == "None" and after[5] == "None"   # mark, preload gone
  warnings = [line for line in out.stderr.splitlines() if line.strip()]
  assert len(warnings) == 1 and warnings[0].startswith("warning: LD_PRELOAD=")
  assert "did not load tcmalloc" in warnings[0]
  out = _probe("tcmalloc", SSFER_TCMALLOC=_libc_path())
  assert out.returncode != 0 and "did not load tcmalloc" in out.stderr


def test_a_bad_library_path_is_one_error_line_and_writes_nothing(tmp_path):
  res = subprocess.run(
      [sys.executable, "-m", "ssfer_jax.main", "--config=configs/default.py",
       f"--workdir={tmp_path / 'w'}"], capture_output=True, text=True, timeout=120,
      cwd=ROOT, env=dict(os.environ, SSFER_TCMALLOC=str(tmp_path / "libtcmalloc.so")))
  lines = [line for line in res.stderr.splitlines() if line.strip()]
  assert res.returncode == 2 and len(lines) == 1, res.stderr
  assert lines[0].startswith("error: SSFER_TCMALLOC=") and "is not a shared library" in lines[0]
  assert not (tmp_path / "w").exists()


@pytest.mark.skipif(not HAS_TCMALLOC, reason=NO_TCMALLOC)
def test_a_run_under_tcmalloc_logs_the_same_numbers_as_under_glibc(tmp_path):
  """The allocator moves no number: same train metrics, bit for bit, and run_info says which."""
  tiny = [*TINY_FLAGS, "--config.train.num_steps=6",
          "--config.train.log_every=2", "--config.train.eval_every=6",
          "--config.train.checkpoint_every=6", "--config.train.progress=False"]
  env = _clean_env()
  logged = {}
  for mode in ("system", "tcmalloc"):
    workdir = tmp_path / mode
    res = subprocess.run([sys.executable, "-m", "ssfer_jax.main", "--config=configs/default.py:dta_snl",
                          f"--workdir={workdir}", f"--malloc={mode}", *tiny],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    with open(workdir / "run_info.json") as f:
      assert json.load(f)["malloc"] == ("glibc" if mode == "system" else "tcmalloc")
    with open(workdir / "metrics.jsonl") as f:
      rows = [json.loads(line) for line in f]
    logged[mode] = [{k: v for k, v in r.items() if k != "time"} for r in rows if r["kind"] == "train"]
  assert logged["system"] and logged["system"] == logged["tcmalloc"]
