#!/bin/sh
# Shared by every run_scripts/*/*.sh: run a recipe from configs/ through ofa_el's launcher.
#   sh run_scripts/launch.sh <recipe under configs/> [extra fairseq arguments]
# Python, first found: $PYTHON; the active virtualenv ($VIRTUAL_ENV) or conda environment ($CONDA_PREFIX);
# this repository's .venv (made by `make venv`, CPU torch); python3. The launcher prints which one runs.
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  py=$VIRTUAL_ENV/bin/python
elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  py=$CONDA_PREFIX/bin/python
elif [ -x "$root/.venv/bin/python" ]; then
  py=$root/.venv/bin/python
else
  py=python3
fi
recipe=$1
shift
exec "$py" -m ofa_el.tools.launch "$root/configs/$recipe" "$@"
