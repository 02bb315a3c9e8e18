"""The run directory's plain files: their names, one writer and one reader for each kind.

Why a module of its own: a run is killed at arbitrary points (preemption, SIGKILL, a full
disk), and every file it leaves must either be whole or be recognisably torn. So

* every JSON file is written whole or not at all (``write_json``: a temporary file in
  the same directory, flushed, then renamed over the target; a rename within a
  directory is atomic on POSIX file systems and object stores write objects whole);
* ``metrics.jsonl`` is append-only: a kill can leave a cut last line, which
  ``read_jsonl`` skips and ``open_append`` cuts off before appending again; a bad line
  anywhere else is an error naming the file and line;
* readers name the file, line and column they cannot parse (never a bare
  ``Expecting value: line 1 column 1``);
* ``WorkdirLock`` keeps a second run off a workdir that a live run is using.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from etils import epath

CONFIG = "config.json"
CONFIG_PREVIOUS = "config.previous.json"
RUN_INFO = "run_info.json"
LABELED_IDS = "labeled_ids.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
EVAL_DIR = "eval"
THRESHOLDS = "thresholds.png"
LOCK = ".lock"
MEMBERS_DIR = "members"  # a population run: members/<k>/ holds member k's files (population.py)


def eval_file(workdir, step: int) -> epath.Path:
  return epath.Path(workdir) / EVAL_DIR / f"step_{int(step)}.json"


def confusion_file(workdir, step: int) -> epath.Path:
  """The teacher's confusion-matrix PNG written with eval/step_N.json."""
  return epath.Path(workdir) / EVAL_DIR / f"confusion_teacher_step_{int(step)}.png"


def member_dir(workdir, k: int) -> epath.Path:
  """Member ``k``'s own run directory inside a population run's workdir."""
  return epath.Path(workdir) / MEMBERS_DIR / str(int(k))


def _is_local(path) -> bool:
  return "://" not in os.fspath(path)


def write_text(path, text: str) -> None:
  """Writes ``text`` to ``path`` whole or not at all (temporary file + rename)."""
  path = epath.Path(path)
  if not _is_local(path):  # object stores (gs://...) write an object whole
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise OSError(e.errno, f"cannot write {path} ({e.strerror or e}); "
                  "check the disk space and that the workdir is writable") from e


def write_json(path, obj, **dump_kwargs) -> None:
  write_text(path, json.dumps(obj, **dump_kwargs))


class UnreadableFileError(ValueError):
  """A run file exists but does not parse; the message names the file and position."""


def parse_json(path, text: str, line_offset: int = 0):
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    what = "empty (0 bytes)" if not text.strip() else f"not valid JSON ({e.msg})"
    raise UnreadableFileError(f"{path} line {e.lineno + line_offset} column {e.colno}: "
                              f"{what}") from None


def read_json(path, *, missing=None):
  """The JSON object in ``path``; ``missing`` when the file does not exist. A file that
  does not parse raises ``UnreadableFileError`` naming the file, line and column."""
  path = epath.Path(path)
  if not path.exists():
    return missing
  return parse_json(path, path.read_text())


def read_json_or_warn(path, *, what: str):
  """``read_json`` for files the run can rebuild: an unreadable one is logged (naming it
  and saying it will be rewritten) and read as absent."""
  try:
    return read_json(path)
  except UnreadableFileError as e:
    logging.warning("%s; treating it as absent: %s", e, what)
    return None


def read_jsonl(path, kind: str | None = None) -> list[dict]:
  """The rows of an append-only JSONL file (``kind``: only rows of that kind).

  A cut last line (a run killed mid-append) is skipped with a warning; an unreadable
  line elsewhere raises ``UnreadableFileError`` naming ``file line N``."""
  path = epath.Path(path)
  if not path.exists():
    return []
  text = path.read_text()
  lines = text.split("\n")
  rows = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) and not text.endswith("\n"):
        logging.warning("%s line %d: incomplete last line (a killed run) skipped", path, i)
        continue
      raise UnreadableFileError(f"{path} line {i}: not valid JSON ({e.msg} at column "
                                f"{e.colno}); fix or delete that line") from None
  return [r for r in rows if kind is None or r.get("kind") == kind]


def dedupe_rows(rows) -> dict:
  """{kind: [row, ...] sorted by step}, one row per (kind, step), the later row winning:
  the one rule for metrics.jsonl, where a resumed run repeats the steps logged after its
  last checkpoint (and the repeat is the valid row). Rows without a kind or step are
  left out."""
  by_key = {}
  for r in rows:
    if "step" in r and "kind" in r:
      by_key[(r["kind"], int(r["step"]))] = r
  out = {}
  for (kind, _), r in sorted(by_key.items(), key=lambda kv: kv[0]):
    out.setdefault(kind, []).append(r)
  return out


def read_metrics(workdir) -> dict:
  """WORKDIR/metrics.jsonl through ``dedupe_rows``: {kind: rows sorted by step}."""
  return dedupe_rows(read_jsonl(epath.Path(workdir) / METRICS))


def checkpoint_row(workdir, step: int) -> dict:
  """The ``kind: run`` row of metrics.jsonl written with the checkpoint at ``step`` (wall
  time so far, compile time, the last training means: what a resumed run adds to, and
  what rebuilds summary.json when a run was killed after its last checkpoint), or {}."""
  rows = [r for r in read_metrics(workdir).get("run", []) if r["step"] == step]
  return rows[-1] if rows else {}


def eval_history(workdir) -> dict:
  """{step: eval result} from WORKDIR/eval/step_N.json; for a file that does not parse
  (written in place by an older version and torn), the top-1 / mean per-class / macro-F1
  of its metrics.jsonl rows."""
  out, torn = {}, []
  for p in (epath.Path(workdir) / EVAL_DIR).glob("step_*.json"):
    rec = read_json_or_warn(p, what="its metrics.jsonl rows are used instead")
    if rec is None:
      torn.append(int(p.stem.split("_")[1]))
    else:
      out[int(rec["step"])] = rec
  if torn:
    for kind, rows in read_metrics(workdir).items():
      for r in rows if kind.startswith("eval_") else ():
        if r["step"] in torn:
          out.setdefault(r["step"], {"step": r["step"]})[kind[len("eval_"):]] = {
              k: r[k] for k in ("top1", "mean_class_acc", "macro_f1")}
  return dict(sorted(out.items()))


def open_append(path):
  """Opens an append-only JSONL file for appending, first cutting off a torn last line
  (so the next row does not get glued onto it)."""
  path = os.fspath(path)
  if os.path.exists(path):
    with open(path, "rb+") as f:
      data = f.read()
      if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logging.warning("%s: cutting off an incomplete last line (%d bytes) before appending",
                        path, len(data) - cut)
        f.truncate(cut)
  return open(path, "a")


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """``WORKDIR/.lock`` holding {pid, host, started}; taken by process 0 of a run.

  Created atomically (a complete temporary file hard-linked to the lock name, so a reader
  never sees a half-written lock). A lock whose holder is on this host and no longer alive
  (SIGKILL, a crash) is stale and taken over; a lock from another host cannot be checked
  and is refused with a message saying how to remove it. Object-store workdirs (gs://) are
  not locked (no atomic create there): a warning says so.
  """

  def __init__(self, workdir):
    self.path = epath.Path(workdir) / LOCK
    self.held = False

  def acquire(self) -> "WorkdirLock":
    if not _is_local(self.path):
      logging.warning("%s is not on a local file system: no workdir lock is taken; "
                      "do not start two runs on it", self.path.parent)
      return self
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    tmp = self.path.parent / f".lock.tmp.{os.getpid()}"
    write_json(tmp, me)
    try:
      for _ in range(2):
        try:
          os.link(tmp, self.path)
          self.held = True
          return self
        except FileExistsError:
          holder = self._holder()
          if not self._stale(holder):
            raise WorkdirLockedError(self._message(holder)) from None
          logging.warning("%s: removing a stale lock of pid %s on %s (no such process)",
                          self.path, holder.get("pid"), holder.get("host"))
          try:
            os.unlink(self.path)
          except FileNotFoundError:
            pass
      raise WorkdirLockedError(self._message(self._holder()))
    finally:
      os.unlink(tmp)

  def _holder(self) -> dict:
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return {}

  def _stale(self, holder: dict) -> bool:
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
      return False
    return not _pid_alive(holder["pid"])

  def _message(self, holder: dict) -> str:
    started = holder.get("started")
    since = (time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(started))
             if isinstance(started, (int, float)) else "")
    return (f"workdir {self.path.parent} is in use by another run (pid {holder.get('pid')} "
            f"on host {holder.get('host')}{since}); wait for it to finish, or if no run is "
            f"active there, delete {self.path}")

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
