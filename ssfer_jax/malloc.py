"""Which C allocator a CPU run uses, and putting tcmalloc under it when the machine has one.

Why it matters on CPU: every step, XLA:CPU's runtime allocates the step's temporary buffer
(152 MB for the dta_snl step at 112 px) with ``malloc`` from a worker thread and frees it at
the end. glibc serves a block that large from a fresh ``mmap`` and unmaps it on ``free``, so
every step faults the whole buffer in again: 37,000 page faults and 60-105 ms of kernel time
per step at 112 px, 0.3 s at 224 px. tcmalloc keeps freed spans for the next request, and
with ``TCMALLOC_RELEASE_RATE=0`` it never hands them back to the kernel, so the step reuses
the same pages (kernel time 0-10 ms). Measurements: docs/performance.md, "fifth session".
The allocator moves no number: the same program runs on the same bytes.

An allocator is fixed when the process starts (glibc's settings are read at start-up, and a
library loaded into a running process cannot replace ``malloc``), so ``reexec_if_wanted``
re-executes the same command line once, with ``LD_PRELOAD`` naming tcmalloc, through
``os.execve``: the process keeps its pid, its open files and its working directory. It runs
once the command line and the config are read and before the run's work starts; ``execve``
drops whatever the first image had started (loading the config imports jax), at the cost
of reading them again (about a second). A preload that does not take (the library named is
not tcmalloc) is reported on one ``warning:`` line and taken out of the environment again,
so that the run's child processes do not inherit it; a failed ``execve`` goes on as started.

``--malloc`` (``python -m ssfer_jax.main``, ``bench/train_step.py``) takes:

* ``auto`` (default): tcmalloc when the system has the library (Debian/Ubuntu:
  ``apt-get install libtcmalloc-minimal4``) and no accelerator plugin for jax is installed
  (on a GPU or TPU the step's buffers live on the device, and host ``malloc`` is not in the
  step); otherwise the process as started.
* ``tcmalloc``: tcmalloc, or one error line saying how to install it (or why the preload
  failed).
* ``system``: the process as started, whatever it preloads.

``SSFER_TCMALLOC=/path/to/libtcmalloc.so`` names a library the dynamic loader does not find.

A process already started under another allocator (``LD_PRELOAD`` of tcmalloc, jemalloc or
mimalloc) is left as it is in every mode.
"""

from __future__ import annotations

import ctypes.util
import importlib.util
import os
import sys
from typing import Mapping

MODES = ("auto", "tcmalloc", "system")
# Set in the re-executed process, to the LD_PRELOAD the command started with: never exec
# twice, and put that value back if the preload did not take.
REEXEC_MARK = "SSFER_MALLOC_REEXEC"
LIBRARY_ENV = "SSFER_TCMALLOC"         # a tcmalloc outside the loader's path (a conda env, ...)
INSTALL_HINT = ("install it (Debian/Ubuntu: apt-get install libtcmalloc-minimal4; "
                "Fedora: dnf install gperftools-libs)")
# Shared-object name fragments in /proc/self/maps -> allocator; glibc when none is mapped.
_KNOWN = (("libtcmalloc", "tcmalloc"), ("libjemalloc", "jemalloc"), ("libmimalloc", "mimalloc"))
# jax plugins that put the step on an accelerator (host malloc then leaves the step).
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "libtpu")


def loaded(maps_text: str | None = None) -> str:
  """The allocator mapped into this process: 'tcmalloc', 'jemalloc', 'mimalloc' or 'glibc'.

  Reads /proc/self/maps (``maps_text`` for tests); 'unknown' where it cannot be read (not
  Linux)."""
  if maps_text is None:
    try:
      with open("/proc/self/maps") as f:
        maps_text = f.read()
    except OSError:
      return "unknown"
  for fragment, name in _KNOWN:
    if fragment in maps_text:
      return name
  return "glibc"


def find_tcmalloc() -> str | None:
  """The tcmalloc library: ``$SSFER_TCMALLOC`` (a path, for a library outside the loader's
  search path), else the name the dynamic loader finds, else None."""
  path = os.environ.get(LIBRARY_ENV)
  if path:
    try:
      with open(path, "rb") as f:
        magic = f.read(4)
    except OSError:
      magic = b""
    if magic != b"\x7fELF":
      raise ValueError(f"{LIBRARY_ENV}={path!r} is not a shared library: point it at the "
                       "tcmalloc library (e.g. /usr/lib/x86_64-linux-gnu/"
                       "libtcmalloc_minimal.so.4) or unset it")
    return path
  for name in ("tcmalloc_minimal", "tcmalloc"):
    found = ctypes.util.find_library(name)
    if found:
      return found
  return None


def accelerator_plugin() -> str | None:
  """The first installed jax accelerator plugin (a GPU or TPU backend), or None."""
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return None   # the user pinned jax to the CPU: the plugin, if any, is not used
  for name in ACCELERATOR_PLUGINS:
    if importlib.util.find_spec(name) is not None:
      return name
  return None


def plan(mode: str, environ: Mapping[str, str], now: str, library: str | None,
         plugin: str | None) -> dict | None:
  """The environment to re-execute with, or None to go on as started.

  ``now``: ``loaded()``; ``library``: ``find_tcmalloc()``; ``plugin``: ``accelerator_plugin()``.
  Raises ValueError (one line) for an unknown mode, and for ``tcmalloc`` where it cannot be
  had: not Linux, no library, or a preload that did not take.
  """
  if mode not in MODES:
    raise ValueError(f"--malloc={mode!r} is not valid: use one of "
                     + ", ".join(repr(m) for m in MODES))
  if mode == "system":
    return None
  if now == "unknown":             # no /proc/self/maps: not Linux's loader
    if mode == "tcmalloc":
      raise ValueError("--malloc=tcmalloc needs Linux (LD_PRELOAD and /proc); use "
                       "--malloc=system here")
    return None
  if now != "glibc":
    return None                    # already under tcmalloc, or the user preloaded another one
  if REEXEC_MARK in environ:       # preloaded, yet glibc's malloc is still the one in use
    if mode == "tcmalloc":
      raise ValueError(f"--malloc=tcmalloc: LD_PRELOAD={environ.get('LD_PRELOAD', '')!r} did "
                       "not load tcmalloc; check the library (ldconfig -p | grep tcmalloc, or "
                       f"${LIBRARY_ENV}), or use --malloc=system")
    return None
  if library is None:
    if mode == "tcmalloc":
      raise ValueError(f"--malloc=tcmalloc: no tcmalloc library on this machine; {INSTALL_HINT}, "
                       "or use --malloc=auto")
    return None
  if mode == "auto" and plugin is not None:
    return None
  env = dict(environ)
  preload = environ.get("LD_PRELOAD", "")
  env["LD_PRELOAD"] = f"{library}:{preload}" if preload.strip() else library
  env.setdefault("TCMALLOC_RELEASE_RATE", "0")   # keep freed pages: the next step reuses them
  env[REEXEC_MARK] = preload
  return env


def _warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)


def reexec_if_wanted(mode: str) -> None:
  """Re-executes this command under tcmalloc when ``plan`` says so; returns otherwise."""
  environ = dict(os.environ)
  # The mark guards this process's own exec only: the run's children do not inherit it.
  started_with = os.environ.pop(REEXEC_MARK, None)
  now = loaded()
  wants_library = mode != "system" and now == "glibc" and started_with is None
  library = find_tcmalloc() if wants_library else None
  env = plan(mode, environ, now, library,
             accelerator_plugin() if mode == "auto" and library else None)
  if started_with is not None and now == "glibc":   # auto, and the preload did not take
    if started_with:
      os.environ["LD_PRELOAD"] = started_with
    else:
      os.environ.pop("LD_PRELOAD", None)
    _warn(f"LD_PRELOAD={environ.get('LD_PRELOAD', '')!r} did not load tcmalloc; this run uses "
          "glibc's malloc (slower on CPU: docs/performance.md)")
    return
  if env is None:
    return
  argv = list(sys.orig_argv)
  argv[0] = sys.executable
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, argv, env)
  except OSError as e:
    if mode == "tcmalloc":
      raise ValueError(f"--malloc=tcmalloc: could not re-execute {sys.executable!r} ({e}); "
                       "use --malloc=system") from e
    _warn(f"could not re-execute under tcmalloc ({e}); this run uses glibc's malloc")


def describe() -> str:
  """One phrase for the banner: the allocator and, for glibc without tcmalloc, the remedy."""
  now = loaded()
  if now == "tcmalloc":
    rate = os.environ.get("TCMALLOC_RELEASE_RATE")
    return "tcmalloc" + (f" (TCMALLOC_RELEASE_RATE={rate})" if rate is not None else "")
  # The hint only where tcmalloc is not there at all ($SSFER_TCMALLOC set counts as there:
  # reexec_if_wanted has judged it).
  if now == "glibc" and not os.environ.get(LIBRARY_ENV) and find_tcmalloc() is None:
    return "glibc (tcmalloc makes CPU steps faster: apt-get install libtcmalloc-minimal4)"
  return now
