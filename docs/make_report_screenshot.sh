#!/usr/bin/env bash
# Makes docs/report_screenshot.png: two short real runs on the built-in synthetic faces
# (FixMatch and DTA+SNL, 300 steps each, about a minute each on 2 CPU cores), one
# cross-split evaluation, the HTML report of both, rendered by headless Chromium.
#
#   bash docs/make_report_screenshot.sh            # from the repository root
#   RUNS=/tmp/my_runs PYTHON=python bash docs/make_report_screenshot.sh
#
# Needs Chromium (Debian/Ubuntu, as root: apt-get update && apt-get install -y chromium).
# Re-running resumes the finished runs (they only re-evaluate) and overwrites the outputs.
set -euo pipefail

cd "$(dirname "$0")/.."
# The checkout's .venv (the README's install) when there is one, else the python on PATH.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)}
if [[ -z "$CHROMIUM" ]]; then
  echo "error: no chromium on PATH; install it (apt-get install -y chromium) or set CHROMIUM=/path/to/chrome" >&2
  exit 2
fi
RUNS=${RUNS:-/tmp/ssfer_report_runs}
OUT_PNG=${OUT_PNG:-docs/report_screenshot.png}
SHORT="--config.train.num_steps=300 --config.train.eval_every=50 --config.train.log_every=10
       --config.train.checkpoint_every=300"

# shellcheck disable=SC2086
"$PYTHON" -m ssfer_jax.main --config=configs/default_dta_snl.py $SHORT --workdir="$RUNS/dta_snl"
# shellcheck disable=SC2086
"$PYTHON" -m ssfer_jax.main --config=configs/default.py:fixmatch $SHORT --workdir="$RUNS/fixmatch"
"$PYTHON" -m ssfer_jax.tools.evaluate --workdir="$RUNS/dta_snl" --dataset=synthetic --split=train
"$PYTHON" -m ssfer_jax.tools.report "$RUNS/dta_snl" "$RUNS/fixmatch" --out="$RUNS/report.html" \
  --title="ssfer_jax: DTA+SNL vs FixMatch, synthetic faces, 300 steps"

PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
"$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$PROFILE" --hide-scrollbars --screenshot="$PWD/$OUT_PNG" \
  --window-size=1280,3400 "file://$RUNS/report.html"
echo "wrote $OUT_PNG from $RUNS/report.html"
