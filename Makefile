# galclip: two commands on a fresh machine — `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.galclip-installed
TEST_STAMP = $(VENV)/.galclip-test-installed
DEMO_PAIRS ?= 4000
DEMO_OUT   ?= galclip-demo

.PHONY: install demo test bench clean

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

test: $(TEST_STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/extract.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
