# Two commands do all set-up:  `make demo`  and  `make test`.
# Both create (or refresh) the virtual environment in .venv, install the pinned stack and build
# the C++ kernels once; later runs only redo what changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# CPU by default. On a CUDA machine: `make test FBGEMM=fbgemm-gpu==1.8.0` (same torch/torchrec pins).
FBGEMM ?= fbgemm-gpu-cpu==1.8.0
TORCH  ?= torch==2.13.0
# triton: the version torch 2.13.0's CUDA wheels require (their metadata on PyPI:
# `triton==3.7.1; platform_system == "Linux"`); the +cpu wheel declares no triton at all, so without
# this pin pip takes the newest. tests/ops/test_triton_compile.py compiles every kernel with it.
DEPS   := tensordict torchmetrics==1.0.3 tqdm pyre-extensions iopath hydra-core omegaconf \
          tensorboard matplotlib==3.11.2 triton==3.7.1 pytest hypothesis ninja numpy pandas pyarrow setuptools wheel \
          starlette==1.10.0 uvicorn==0.54.0 prometheus-client==0.26.0 httpx2==2.16.2 faiss-cpu==1.15.1
# pytest arguments, e.g. `make test PYTEST_ARGS="-k bloom -x"`
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: all venv build test demo bench gpu-check clean distclean

all: venv

# 1. the pinned third-party stack (re-run when this Makefile changes)
$(VENV)/.stack: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH) $(FBGEMM)
	$(PIP) install -q --no-deps torchrec==1.8.0
	$(PIP) install -q $(TORCH) $(DEPS)
	@echo "note: pip's complaint that torchrec requires fbgemm-gpu is expected; $(FBGEMM) provides it"
	touch $@

# 2. silverrec itself, editable, with its C++ extension built in place (re-run on packaging
#    changes; `make build` recompiles only the kernels whose sources changed)
$(VENV)/.silverrec: $(VENV)/.stack setup.cfg setup.py pyproject.toml
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

venv: $(VENV)/.silverrec build

# Incremental C++ build (ninja); serialised with flock so parallel builds never clash.
build: $(VENV)/.silverrec
	flock /tmp/silverrec-build.lock $(PY) setup.py -q build_ext --inplace

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv
	$(PY) -m silverrec.train.demo $(DEMO_ARGS)

bench: venv
	$(PY) benchmarks/bloom.py
	$(PY) benchmarks/ann.py
	@test -f runs/demo/serving.pt2 || { echo "the serving benchmarks need the demo's model: run make demo first"; exit 1; }
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/serving_profile.py --recall 512
	$(PY) benchmarks/load_test.py
	$(PY) benchmarks/multitask_headroom.py

# On a machine with one CUDA GPU (about 8 minutes): the same pins with fbgemm-gpu, FAISS's GPU
# build when it installs (else faiss-cpu), then benchmarks/gpu_check.py: every op on CUDA against
# its reference, benchmarks/ann.py on CUDA at batch 1/16/256, the demo's serving graph exported for
# CUDA (latency, parity with the CPU graph), one table. Without CUDA it fails at once, never skips
# (`.venv/bin/python benchmarks/gpu_check.py --dry-run` runs the steps on the CPU).
gpu-check:
	@if [ -x $(PY) ]; then $(PY) benchmarks/gpu_check.py --preflight; fi
	$(MAKE) venv FBGEMM=fbgemm-gpu==1.8.0
	$(PY) benchmarks/gpu_check.py --preflight
	$(PIP) uninstall -y -q faiss-cpu
	$(PIP) install -q faiss-gpu-cu12==1.14.1.post1 || $(PIP) install -q faiss-cpu==1.15.1
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf build silverrec/*.so .pytest_cache .hypothesis

distclean: clean
	rm -rf $(VENV) *.egg-info
