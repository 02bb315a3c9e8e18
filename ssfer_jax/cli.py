"""How every command line of the project reports a mistake: one ``error: ...`` line and exit 2.

A user who misspells a key, names a missing file or picks a variant that does not exist
should read one line that names the key, file or line and says what to do, not a
40-line traceback. ``--verbose`` on the command line or ``SSFER_DEBUG=1`` in the
environment brings the traceback back (for bug reports).

    @cli.guard                       # argparse-style mains: main(argv=None) -> int
    def main(argv=None): ...

    cli.run_absl(main)               # absl mains (flags parsed through cli.parse_flags)
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

EXIT_USAGE = 2          # the user's input was wrong (bad flag, key, file, config value)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it

# Exceptions that mean "the input was wrong", reported without the "unexpected" note.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FileExistsError, KeyError, ImportError, UnicodeError)


def debug_enabled(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return os.environ.get("SSFER_DEBUG", "") not in ("", "0") or "--verbose" in argv


def strip_verbose(argv):
  """``argv`` without ``--verbose`` (the CLIs' parsers do not define it)."""
  return [a for a in argv if a != "--verbose"]


def one_line(e: BaseException) -> str:
  """The exception's message on one line (KeyError's quotes and chained newlines removed)."""
  msg = e.args[0] if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
  msg = " ".join(str(msg).split())
  if not msg:
    msg = e.__class__.__name__
  if not isinstance(e, USER_ERRORS + (UserError,)):
    msg = (f"{msg} (unexpected {e.__class__.__name__}; run again with --verbose or "
           "SSFER_DEBUG=1 for the traceback, and please report it)")
  return msg


class UserError(Exception):
  """A mistake in the command line, config or input data; its message says what to do."""


def fail(message: str, code: int = EXIT_USAGE):
  """Prints ``error: message`` on stderr and exits with ``code``."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def handle(e: BaseException, argv=None) -> int:
  """The exit code for ``e`` after printing it (re-raises in debug mode)."""
  if debug_enabled(argv):
    raise e
  if isinstance(e, KeyboardInterrupt):
    print("interrupted", file=sys.stderr, flush=True)
    return EXIT_INTERRUPTED
  print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
  return EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the project's error form: one ``error:`` line naming the --help."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)

  def error(self, message):
    fail(f"{message} (python -m {self.prog.removeprefix('python -m ')} --help lists the options)"
         if self.prog.startswith("python -m ") else f"{message} ({self.prog} --help)")


def guard(main):
  """Wraps ``main(argv=None) -> int`` so that errors become one line and an exit code."""

  @functools.wraps(main)
  def wrapped(argv=None):
    full = sys.argv if argv is None else [sys.argv[0]] + list(argv)
    try:
      return main(strip_verbose(full)[1:])
    except SystemExit:
      raise
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - reported as one line
      return handle(e, full)

  return wrapped


def parse_flags(argv):
  """absl ``flags_parser``: flag and config-file errors as one ``error:`` line."""
  from absl import flags  # absl is only needed by the absl CLIs
  argv = strip_verbose(argv)
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    raise
  except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
    if debug_enabled():
      raise
    fail(explain_flag_error(e, argv))


def explain_flag_error(e: BaseException, argv) -> str:
  """A flags error's message; for ``--config`` problems, the file, variant or key and a fix."""
  from ssfer_jax import catalog  # keys and methods, for an override's hint
  hint = catalog.explain_override(argv)
  return hint or " ".join(str(e).split()) or e.__class__.__name__


def run_absl(main):
  """``absl.app.run(main)`` with one-line errors (parsing and inside ``main``)."""
  from absl import app

  def main_guarded(argv):
    try:
      return main(argv)
    except SystemExit:
      raise
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001
      sys.exit(handle(e))

  app.run(main_guarded, flags_parser=parse_flags)
