"""How every command line of the project reports a mistake: one ``error: ...`` line and exit 2.

A user who misspells a key, names a missing file or picks a variant that does not exist
should read one line that names the key, file or line and says what to do, not a
40-line traceback. ``--verbose`` on the command line or ``SSFER_DEBUG=1`` in the
environment brings the traceback back (for bug reports).

    FLAGS = flags.FlagValues()       # tools: main(argv=None) -> int, callable in-process
    _OUT = flags.DEFINE_string("out", None, "...", flag_values=FLAGS)

    @cli.guard
    def main(argv=None):
      paths = cli.parse(FLAGS, argv, "python -m ssfer_jax.tools.NAME", __doc__, positional="PATH")

    cli.run_absl(main)               # app.run mains on absl's global FLAGS (main, prepare)
"""

from __future__ import annotations

import functools
import os
import re
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


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def usage_error(message: str, prog: str):
  """``fail`` with a pointer to the tool's ``--help``."""
  fail(f"{message} ({prog} --help lists the options)")


def parse(fv, argv, prog: str, doc: str, positional: str | None = None) -> list[str]:
  """Parses ``argv`` (no program name) into the tool's own ``flags.FlagValues`` ``fv``.

  Each tool has its own ``FlagValues`` (not absl's global ``FLAGS``) so that several tools
  can be imported in one process and ``main(argv)`` run any number of times: every call
  starts from the defaults. Returns the positional arguments: one or more are required
  when ``positional`` names them (e.g. ``"PATH"``), none are accepted otherwise.
  ``--help`` prints ``doc`` and the flags and exits 0; a bad flag is one ``error:`` line.
  """
  from absl import flags  # absl is a dependency of the CLIs only
  argv = list(argv)
  options = argv[:argv.index("--")] if "--" in argv else argv
  if any(a in HELP_FLAGS for a in options):
    print(help_text(fv, prog, doc, positional))
    sys.exit(0)
  fv.unparse_flags()
  try:
    args = fv([prog] + argv)[1:]
  except flags.Error as e:
    message = " ".join(str(e).split())
    missing = re.fullmatch(r"flag (--[\w-]+)=None: Flag \S+ must have a value other than None\.",
                           message)
    usage_error(f"{missing.group(1)} is required" if missing else message, prog)
  if positional is None and args:
    usage_error(f"unexpected arguments: {' '.join(args)}; flags take the form --name=value",
                prog)
  if positional is not None and not args:
    usage_error(f"the following arguments are required: {positional}", prog)
  return args


def help_text(fv, prog: str, doc: str, positional: str | None = None) -> str:
  """``--help``: a usage line, the tool's docstring and its flags with their defaults."""
  usage = f"usage: {prog} [flags]" + (f" {positional} [{positional} ...]" if positional else "")
  lines = [line for line in fv.get_help(include_special_flags=False).splitlines()
           if line.startswith(" ")]  # without absl's per-module headers
  return f"{usage}\n\n{(doc or '').strip()}\n\nflags:\n" + "\n".join(lines)


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
