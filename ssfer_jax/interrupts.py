"""How a run reacts to SIGTERM and Ctrl-C, so it stops with one line and a known state.

Inside the training loop (``LoopSignals``) the handlers only set flags, which the loop
reads between steps: SIGTERM (preemption) saves a checkpoint and exits, Ctrl-C lets an
in-flight save finish and exits without saving. Outside it (``OutsideLoopSigint``:
start-up, the final summary) Ctrl-C raises ``Interrupted`` at once. ``main`` maps
``Interrupted`` to ``train.EXIT_INTERRUPTED`` with its message as the only output.
"""

from __future__ import annotations

import logging
import signal
import threading


class Interrupted(KeyboardInterrupt):
  """Ctrl-C (``train.EXIT_INTERRUPTED``): the message is the one line to print."""


class LoopSignals:
  """Flags SIGTERM (preemption: the loop saves and exits at the next step) and the first
  SIGINT (Ctrl-C: the loop lets the in-flight save finish and stops at the next step,
  without a traceback); a second Ctrl-C interrupts at once."""

  def __init__(self):
    self.raised = False
    self.interrupted = False
    self._old = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      logging.info("Ctrl-C: stopping after the current step (press again to stop at once)")
      self.interrupted = True
      signal.signal(signal.SIGINT, signal.default_int_handler)
      return
    logging.warning("SIGTERM received: saving a checkpoint at the next step and exiting")
    self.raised = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


class OutsideLoopSigint:
  """Ctrl-C outside the training loop (start-up: building, restoring, compiling; the end:
  summary, report) raises ``Interrupted`` at once and is remembered, so that a library
  swallowing the exception cannot make the run carry on (``check`` before the loop)."""

  def __init__(self):
    self.hit = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.hit = True
    self.check()

  def check(self):
    if self.hit:
      raise Interrupted("interrupted (Ctrl-C) outside the training loop; no checkpoint was "
                        "lost: run the same command to continue")

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGINT, self._old)
