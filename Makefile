# The two commands of the README:  make book  (set up + build the book)  and  make test.
# Everything installs into .venv with the exact pins of constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup book test test-lib test-notebooks lab bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.1"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,book,hub]"
	touch $(STAMP)

book: setup
	$(VENV)/bin/jupyter-book build . --keep-going
	@echo "open _build/html/index.html"

test: test-lib test-notebooks

test-lib: setup
	$(PY) -m pytest

# nbval re-runs every committed chapter and compares its outputs; pytest exits 5 when there
# is no notebook to collect, which is not a failure here.
test-notebooks: setup
	$(PY) -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg chapters/ \
		|| [ $$? -eq 5 ]

lab: setup
	$(VENV)/bin/jupyter lab chapters/

bench: setup
	$(PY) -m mini_gpt.cli bench

clean:
	rm -rf _build .pytest_cache
