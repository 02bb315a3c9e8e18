"""Command line: ``python -m ssfer_jax.main --config=configs/<exp>.py[:variant] --workdir=DIR``.

Overrides: ``--config.train.num_steps=200 --config.data.labels_per_class=25``.
Running the same command again resumes from the latest checkpoint in ``--workdir``.
"""

from __future__ import annotations

import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and outputs.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:  # orbax / grain INFO lines drown the progress line
    absl_logging.set_verbosity(absl_logging.WARNING)
  config = _CONFIG.value
  from ssfer_jax import parallel  # noqa: imported after flags so --help stays fast
  parallel.maybe_initialize_distributed(config.distributed)
  from ssfer_jax import train
  try:
    train.run(config, _WORKDIR.value)
  except (ValueError, PermissionError, FileNotFoundError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
