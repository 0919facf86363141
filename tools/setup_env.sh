#!/usr/bin/env bash
# Creates (or refreshes) .venv with Rosetta and its pinned dependencies.
# Idempotent: skips the install when setup.py and constraints.txt are
# unchanged since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if ! "$PY" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14)' 2>/dev/null; then
  echo "Rosetta needs Python 3.11-3.13 (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
STAMP=.venv/.rosetta-installed
WANT=$(cat setup.py constraints.txt | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$WANT" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade 'pip==26.3' >/dev/null
echo "Installing Rosetta and its pinned dependencies into .venv (a few minutes)..." >&2
.venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test,peers,beam,teacher]'
echo "$WANT" > "$STAMP"
