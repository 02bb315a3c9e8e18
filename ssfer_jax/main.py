"""Train (or resume) a facial-expression model.

    python -m ssfer_jax.main --config=configs/<exp>.py[:variant] --workdir=DIR
    python -m ssfer_jax.main --list                      # configs, methods, ablations, datasets
    python -m ssfer_jax.main --config=configs/default.py:dta_snl --dry_run

Overrides: ``--config.train.num_steps=200 --config.data.labels_per_class=25``.
On CPU a run re-executes itself once under tcmalloc when the machine has it (``--malloc``,
ssfer_jax/malloc.py: glibc re-faults XLA's per-step buffer); the banner names the allocator.
Running the same command again resumes from the latest checkpoint in ``--workdir``; a
workdir that holds a different run is refused before anything is written.
Errors are one ``error:`` line (exit 2); ``--verbose`` or ``SSFER_DEBUG=1`` shows the
traceback. Exit status: 0 done, 2 a usage/config/file/lock error, 3 NaN/inf (the kept
checkpoints are finite), 75 preempted (SIGTERM, checkpoint saved), 130 Ctrl-C.
"""

from __future__ import annotations

import sys

from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from ssfer_jax import cli, malloc

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")
_LIST = flags.DEFINE_bool("list", False, "Print the configs, methods, ablations/variants and "
                          "datasets, then exit.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the resolved config and the label split, "
                             "then exit (writes nothing).")
_MALLOC = flags.DEFINE_enum("malloc", "auto", malloc.MODES,
                            "C allocator for a CPU run: auto = tcmalloc when installed and no "
                            "GPU/TPU plugin is (re-executes this command once with LD_PRELOAD; "
                            "ssfer_jax/malloc.py says why), tcmalloc = require it, system = as "
                            "started.")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}; flags take the form "
                        "--name=value (python -m ssfer_jax.main --help)")
  if not flags.FLAGS["verbosity"].present:  # orbax / grain INFO lines drown the progress line
    absl_logging.set_verbosity(absl_logging.WARNING)
  if _LIST.value:
    from ssfer_jax import catalog
    print(catalog.listing())
    return
  try:
    config = _CONFIG.value
    if config is not None:
      config.get("train")  # ml_collections loads lazily: a failed load raises here
  except OSError as e:  # ml_collections loads the file lazily and hides the cause
    from ssfer_jax import catalog
    raise cli.UserError(catalog.explain_override(sys.argv) or str(e)) from e
  if config is None:
    raise cli.UserError("--config is required, e.g. --config=configs/default.py "
                        "(python -m ssfer_jax.main --list shows the configs)")
  if _DRY_RUN.value:
    from ssfer_jax import console
    print(console.dry_run(config))
    return
  if not _WORKDIR.value:
    raise cli.UserError("--workdir is required: the directory for checkpoints, logs and "
                        "results (an existing one resumes its run)")
  malloc.reexec_if_wanted(_MALLOC.value)  # an allocator is fixed at process start: before any work
  from ssfer_jax import parallel  # noqa: imported after flags so --help stays fast
  parallel.maybe_initialize_distributed(config.distributed)
  from ssfer_jax import train
  try:
    summary = train.run(config, _WORKDIR.value)
  except train.NonFiniteLossError as e:  # the checkpoints kept are finite: say so, exit 3
    cli.fail(str(e), train.EXIT_NONFINITE)
  except train.Interrupted as e:  # Ctrl-C: the in-flight save completed
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(train.EXIT_INTERRUPTED)
  if "preempted_at" in summary:  # SIGTERM: checkpoint saved; a scheduler should requeue
    sys.exit(train.EXIT_PREEMPTED)


def _help_with_listing():
  """--help shows the catalogue (configs, methods, datasets) below the usage text."""
  if any(a in cli.HELP_FLAGS for a in sys.argv[1:]):
    from ssfer_jax import catalog
    module = sys.modules["__main__"]
    module.__doc__ = (module.__doc__ or "") + "\n" + catalog.listing() + "\n"


if __name__ == "__main__":
  _help_with_listing()
  cli.run_absl(main)
