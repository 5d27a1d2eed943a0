# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements/lock-py311-cpu.txt
STAMP := $(VENV)/.ofa-el-installed

.PHONY: venv demo demo-all test test-all bench clean

venv: $(STAMP)

# --no-deps everywhere: the lock lists every package, and ve-fairseq's declared
# torchaudio requirement would otherwise pull a second multi-GB torch.
$(STAMP): $(LOCK) setup.py
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
