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
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,book,hub,onnx]"
	touch $(STAMP)

book: setup
	$(VENV)/bin/jupyter-book build . -W -n --keep-going
	@echo "open _build/html/index.html"

# One pytest run: the unit tests and every chapter notebook (nbval), one summary line.
# pytest exits 5 when it collects nothing at all, which is not a failure here.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

test: setup
	$(PY) -m pytest $(NBVAL) tests chapters || [ $$? -eq 5 ]

test-lib: setup
	$(PY) -m pytest

test-notebooks: setup
	$(PY) -m pytest $(NBVAL) chapters || [ $$? -eq 5 ]

lab: setup
	$(VENV)/bin/jupyter lab chapters/

bench: setup
	$(VENV)/bin/mini-gpt bench --json benchmarks/results/model.json
	$(PY) benchmarks/bench_train.py --json benchmarks/results/train.json

clean:
	rm -rf _build .pytest_cache
