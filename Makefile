# Two commands a fresh machine needs: `make sweep` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SPACE ?= search_spaces/mnist5k_mislabeled.yaml

export RAY_AUTH_MODE ?= disabled
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0
export PYTHONUNBUFFERED := 1

CHROMIUM := /usr/bin/chromium

.PHONY: install browser test sweep clean

install: $(STAMP)

# torch goes first and pinned: an unpinned request would pull a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The browser tests drive Debian's Chromium (Playwright's own browser download is refused on a
# closed network); without root or apt-get they skip, saying so.
browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && \
	    apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "note: could not install Chromium (apt-get install chromium); the browser tests will skip"

# Two workers, one torch thread each (two 2-thread processes on 2 cores run 5-9x slower); whole
# files per worker, so module fixtures are built once; the reference cache is shared.
test: $(STAMP) browser
	OMP_NUM_THREADS=1 $(PY) -m pytest tests -n 2 --dist loadfile

sweep: $(STAMP)
	$(VENV)/bin/scissorhands sweep $(SPACE)

clean:
	rm -rf $(VENV) .pytest_cache
