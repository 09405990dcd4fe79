# One place for every command a user or CI runs. `make install demo` then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test test-full test-slow lint typecheck bench bench-gpu clean-data

install:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt -e ".[dev,optuna]"
	$(PIP) check

# A small sweep (PatchKNN, PaDiM, a short OneNIP schedule) on the embedded synthetic set, then its leaderboard.
demo:
	$(PY) -m anomaly_zoo.train sweep=demo
	$(PY) -m anomaly_zoo.leaderboard outputs/demo

# Two tiers: `make test` (fast, every push) leaves out the tests marked `slow`; `make test-full` runs everything.
test:
	$(PY) -m pytest -q -m "not slow"

test-full:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# mypy on anomaly_zoo/ ([tool.mypy] in pyproject.toml).
typecheck:
	$(PY) -m mypy

# ADEval (the binned accumulator bench_metrics compares the suite with) goes into .bench-deps/, not the virtualenv:
# it declares opencv-python, which would clash with the opencv-python-headless anomalib installs (`pip check`).
bench:
	test -d .bench-deps/adeval || $(PIP) install --no-deps --target .bench-deps ADEval==1.1.0
	PYTHONPATH=.bench-deps $(PY) experiments/bench_metrics.py
	$(PY) experiments/bench_onenip.py
	$(PY) experiments/bench_coreset.py
	$(PY) experiments/bench_synthesis.py
	$(PY) experiments/bench_bootstrap.py --pixel
	$(PY) experiments/bench_eval_scale.py --repeats 3

# Every GPU measurement of issue 18 in one budget (experiments/bench_gpu.py; --tiny on a CPU). Needs no install:
# the repository goes on PYTHONPATH. On a bare CUDA machine: `make bench-gpu PY=python3` (see experiments/README.md).
bench-gpu:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(PY) experiments/bench_gpu.py $(ARGS)

clean-data:
	rm -rf data/synthetic
