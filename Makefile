# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) .venv and install the project with the tested pins in constraints.txt.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all reliability lint setup browser clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/alexnet demo

# Chromium for the browser tests comes from Debian's packages (Playwright drives /usr/bin/chromium).
browser:
	@test -x /usr/bin/chromium || { (apt-get update -qq && apt-get install -y -qq chromium) || echo "warning: could not install chromium; browser tests will skip"; }

test: $(STAMP) browser
	$(BIN)/ruff check .
	ALEXNET_ARTIFACTS=artifacts $(BIN)/python -m pytest

test-all: $(STAMP) browser
	$(BIN)/python -m pytest -m ''

# Figures measured by the guarantees' tests go to artifacts/reliability.json (see docs/reliability.md).
reliability: $(STAMP) browser
	ALEXNET_RELIABILITY_JSON=artifacts/reliability.json $(BIN)/python -m pytest -m reliability

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
