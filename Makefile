# The two commands the README opens with. Both set themselves up from nothing (python3 + a C compiler).
#   make demo   -> runtime install (no torch) + the demo build, offline
#   make test   -> test install (torch==2.13.0 first, then transformers & co) + the whole pytest suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test setup setup-test clean

$(VENV)/.runtime: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "edgepack: installing runtime dependencies (llama-cpp-python compiles llama.cpp once, ~5 min on 2 cores)"
	$(PIP) install -e .
	touch $@

# torch first and pinned: any other torch resolution pulls gigabytes of CUDA wheels.
$(VENV)/.test: $(VENV)/.runtime
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	touch $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

demo: $(VENV)/.runtime
	HF_HUB_OFFLINE=1 $(VENV)/bin/edgepack build examples/demo/edgepack.toml -o out/demo

test: $(VENV)/.test
	HF_HUB_OFFLINE=1 $(PY) -m pytest

clean:
	rm -rf $(VENV) out .edgepack-cache
