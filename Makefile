# galclip: two commands on a fresh machine — `make demo` and `make test` (on a CUDA machine: `make demo GPU=1`).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
GPU    ?= 0
# GPU=1: the same pinned environment with faiss-gpu 1.15.1 in place of faiss-cpu (torch in the lock is a CUDA build)
STAMP   = $(VENV)/.galclip-installed$(if $(filter 1,$(GPU)),-gpu,)
TEST_STAMP = $(VENV)/.galclip-test-installed
DEMO_PAIRS ?= 4000
DEMO_OUT   ?= galclip-demo

.PHONY: install demo test lint bench clean browser

install: $(STAMP)

# Everything pinned in requirements.lock (torch==2.14.1, torchvision==0.29.1, zarr 3, faiss-cpu,
# umap-learn, kcorrect ...), then galclip itself in editable mode.
$(STAMP): requirements.lock requirements-gpu.lock requirements-nodeps.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
ifeq ($(GPU),1)
	grep -v '^faiss-cpu==' requirements.lock > $(VENV)/requirements-gpu.txt
	grep -v '^#' requirements-gpu.lock >> $(VENV)/requirements-gpu.txt
	$(PY) -m pip uninstall --quiet -y faiss-cpu || true
	$(PY) -m pip install --quiet -r $(VENV)/requirements-gpu.txt
	rm -f $(VENV)/.galclip-installed
else
	$(PY) -m pip uninstall --quiet -y faiss-gpu 2>/dev/null || true
	$(PY) -m pip install --quiet -r requirements.lock
	rm -f $(VENV)/.galclip-installed-gpu
endif
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# test-only packages (the real spender, for checkpoint compatibility), without their declared deps
$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-test.lock
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/galclip demo --pairs $(DEMO_PAIRS) --out $(DEMO_OUT)

# the tests open galclip's files with the tools astronomers use: Debian's chromium through chromium-driver (the two
# packages match each other), STILTS (TOPCAT's command line) and fitsverify. Installed here when missing (CI runs as
# root on Debian); nothing downloads a browser build.
TEST_TOOLS = chromium chromedriver stilts fitsverify
browser:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver stilts fitsverify >/dev/null; \
	else echo "the tests need Debian's chromium, chromium-driver, stilts and fitsverify (missing:$$missing): sudo apt-get install chromium chromium-driver stilts fitsverify" >&2; exit 1; fi

# the lint and format gate (ruff, pinned in requirements-test.lock, configured in pyproject.toml), before the tests
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

test: lint browser
	SE_OFFLINE=true $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/extract.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build/test-artifacts
