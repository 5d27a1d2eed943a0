#!/bin/sh
# Shared by every run_scripts/*/*.sh: run a recipe from configs/ through ofa_el's launcher.
#   sh run_scripts/launch.sh <recipe under configs/> [extra fairseq arguments]
# Python: $PYTHON if set, else this repository's .venv (made by `make venv`), else python3
# (which must have ofa_el installed: pip install -e <repo>).
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -n "${PYTHON:-}" ]; then
  py=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
  py=$root/.venv/bin/python
else
  py=python3
fi
recipe=$1
shift
exec "$py" -m ofa_el.tools.launch "$root/configs/$recipe" "$@"
