#!/usr/bin/env bash
# Regenerate constraints.txt from a fresh venv resolved against pyproject's ranges (newest allowed
# releases), after the suite passes in it: scripts/freeze_constraints.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/ppllava-freeze}
rm -rf "$VENV" && python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -q -e ".[dev]"
OMP_NUM_THREADS=2 "$VENV/bin/python" -m pytest -q
{
  echo "# Exact versions the test suite passed with (scripts/freeze_constraints.sh, $(date -u +%F))."
  echo "# Used by make demo / make test / .ci/run: pip install -c constraints.txt ..."
  "$VENV/bin/pip" freeze --exclude-editable | grep -v '^ppllava-hermes'
} > constraints.txt
