# The two commands the README opens with. Both set themselves up from nothing (python3 + a C compiler).
#   make demo   -> runtime install (no torch) + the demo build, offline
#   make test   -> test install (torch==2.13.0 first, then transformers & co) + the whole pytest suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: demo test test-unit test-integration test-fidelity test-fast setup setup-test clean

# llama-cpp-python is built here, once, into a wheel cache outside the repo, without llama.cpp's AMX kernels:
# a -march=native build enables them on CPUs with AMX (this CI's Xeons), and ggml_backend_amx_mul_mat crashes
# (SIGSEGV) on Q8_0/Q4 models there. The portable AVX2 build runs everywhere x86-64-v3 does.
LLAMA_CPP_VERSION := 0.3.36
WHEELHOUSE := $(HOME)/.cache/edgepack/wheels
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEEL := $(WHEELHOUSE)/.llama-cpp-python-$(LLAMA_CPP_VERSION)-portable

$(LLAMA_WHEEL):
	@echo "edgepack: compiling llama-cpp-python $(LLAMA_CPP_VERSION) once (~5 min on 2 cores; cached in $(WHEELHOUSE))"
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PYTHON) -m pip --disable-pip-version-check -q wheel --no-cache-dir --no-deps \
		llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(WHEELHOUSE)
	touch $@

$(VENV)/.runtime: pyproject.toml $(LLAMA_WHEEL)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --find-links $(WHEELHOUSE) -e .
	touch $@

# torch first and pinned: any other torch resolution pulls gigabytes of CUDA wheels.
# Chromium (Debian) renders the HTML report in its test.
$(VENV)/.test: $(VENV)/.runtime
	test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "edgepack: could not install chromium; the report's browser test will report itself skipped"
	$(PIP) install torch==2.13.0
	$(PIP) install --find-links $(WHEELHOUSE) -e '.[test]'
	touch $@

setup: $(VENV)/.runtime
setup-test: $(VENV)/.test

demo: $(VENV)/.runtime
	HF_HUB_OFFLINE=1 $(VENV)/bin/edgepack build examples/demo/edgepack.toml -o out/demo

test: $(VENV)/.test
	$(PY) -m pytest

# The tiers a contributor runs on their own (README, "Tests"); `make test` above stays the full run CI uses.
#   test-unit         no torch, no llama.cpp (tests/unit/conftest.py checks it): about a minute
#   test-integration  the stages for real: llama.cpp, builds, installs, the loopback Hub
#   test-fidelity     edgepack's GGUFs against transformers, sentencepiece and PEFT
#   test-fast         every tier without the tests marked slow (pytest -m "not slow")
test-unit: $(VENV)/.test
	$(PY) -m pytest tests/unit

test-integration: $(VENV)/.test
	$(PY) -m pytest tests/integration

test-fidelity: $(VENV)/.test
	$(PY) -m pytest tests/fidelity

test-fast: $(VENV)/.test
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) out .edgepack-cache
