# galclip: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.galclip-installed
TEST_STAMP = $(VENV)/.galclip-test-installed
DEMO_PAIRS ?= 4000
DEMO_OUT   ?= galclip-demo

.PHONY: install demo test bench clean browser

install: $(STAMP)

# Everything pinned in requirements.lock (torch==2.14.1, torchvision==0.29.1, zarr 3, faiss-cpu,
# umap-learn, kcorrect ...), then galclip itself in editable mode.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# test-only packages (the real spender, for checkpoint compatibility), without their declared deps
$(TEST_STAMP): $(STAMP) requirements-test.lock
	$(PY) -m pip install --quiet --no-deps -r requirements-test.lock
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(VENV)/bin/galclip demo --pairs $(DEMO_PAIRS) --out $(DEMO_OUT)

# the browser tests drive Debian's chromium through chromium-driver (the two packages match each other);
# installed here when missing (CI runs as root on Debian). Nothing downloads a browser build.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "the browser tests need Debian's chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2; exit 1; fi

test: $(TEST_STAMP) browser
	SE_OFFLINE=true $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/extract.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache build/test-artifacts
