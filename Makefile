# Two commands: `make demo` and `make test`. Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.scforge-installed
EXTRAS ?= dev,census,eval

.PHONY: venv demo test test-all lint bench bench-full clean

venv: $(STAMP)

# torch is installed first and pinned through constraints.txt so that nothing pulls a CUDA build.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: venv
	$(VENV)/bin/scforge demo

test: venv
	$(PY) -m pytest -q -p no:cacheprovider

test-all: venv
	$(PY) -m pytest -q -p no:cacheprovider --runslow --runmultiproc

lint: venv
	$(VENV)/bin/ruff check scforge kernels tests benchmarks tools

bench: venv
	$(PY) -m benchmarks --suite quick

bench-full: venv
	$(PY) -m benchmarks --suite full

clean:
	rm -rf $(VENV) build *.egg-info
