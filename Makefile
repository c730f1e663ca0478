# Every target sets up its own virtual environment on first use (CPU PyTorch pinned).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.drgan-installed
OUT ?= out/demo

.PHONY: demo test test-slow bench venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch lies on disk as this exact version; any other spelling pulls a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# The GPU machines run triton 3.6: test the kernels with the same release.
	$(PY) -m pip install -q triton==3.6.0
	$(PY) -m pip install -q -e '.[dev,onnx,dali,eval]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/drgan demo --out $(OUT)

# pytest exits 5 when it collects nothing: that is reported, not treated as a crash.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) -m pytest bench -q --benchmark-json=bench/results/cpu-latest.json
