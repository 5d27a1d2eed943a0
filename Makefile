# Two commands do everything on a fresh machine: `make demo` and `make test`.
# The lock is for Python 3.11: python3.11 when it is on PATH, else python3 (checked below); or make PYTHON=...
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock-py311-cpu.txt
STAMP := $(VENV)/.ofa-el-installed

.PHONY: venv demo demo-all test test-all bench clean

venv: $(STAMP)

# --no-deps everywhere: the lock lists every package, and ve-fairseq's declared
# torchaudio requirement would otherwise pull a second multi-GB torch.
$(STAMP): $(LOCK) setup.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null || { \
	  echo "error: $(PYTHON) is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '(not found)'); the pinned lock ($(LOCK)) needs Python 3.11: run make PYTHON=/path/to/python3.11 ..." >&2; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r $(LOCK)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	$(PY) -m ofa_el.tools.demo

demo-all: venv
	$(PY) -m ofa_el.tools.demo --all

test: venv
	$(PY) -m pytest -q -m "not slow" tests

test-all: venv
	$(PY) -m pytest -q tests

bench: venv
	$(PY) benchmarks/criterion_bench.py

clean:
	rm -rf $(VENV) demo/ build/ *.egg-info

# ---- On a GPU machine (README.md, "On a GPU machine"): the registry's CUDA build of torch WITH its
# dependencies (the nvidia-* CUDA runtime wheels), then every other pin of the CPU lock with --no-deps
# (so ve-fairseq's torchaudio requirement cannot pull a second torch), then this package.
VENV_GPU ?= .venv-gpu
TORCH_GPU ?= torch==2.14.1
PYTHON_GPU ?= $(VENV_GPU)/bin/python
GPU_STAMP := $(VENV_GPU)/.ofa-el-installed
GPU_LOCK := $(VENV_GPU)/lock-without-torch.txt

.PHONY: venv-gpu gpu-check

venv-gpu: $(GPU_STAMP)

$(GPU_STAMP): $(LOCK) setup.py
	test -x $(VENV_GPU)/bin/python || $(PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install -q --disable-pip-version-check "$(TORCH_GPU)"
	grep -v '^torch==' $(LOCK) > $(GPU_LOCK)
	$(VENV_GPU)/bin/python -m pip install -q --disable-pip-version-check --no-deps -r $(GPU_LOCK)
	$(VENV_GPU)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@$(VENV_GPU)/bin/python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' || { \
	  echo "error: $(TORCH_GPU) installed a torch without CUDA ($$($(VENV_GPU)/bin/python -c 'import torch; print(torch.__version__)')): pip found a CPU build first; point pip at an index with CUDA builds or set TORCH_GPU" >&2; exit 2; }
	touch $@

# With PYTHON_GPU left at .venv-gpu/bin/python the venv is built first; make gpu-check PYTHON_GPU=python3 uses
# a cluster's own CUDA Python instead. GPU_CHECK_ARGS go to the script (e.g. --parts criterion, --smoke).
gpu-check: $(if $(filter $(VENV_GPU)/bin/python,$(PYTHON_GPU)),venv-gpu)
	$(PYTHON_GPU) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)
