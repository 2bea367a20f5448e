# Two commands: `make demo` and `make test`. Everything else is set up here.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.advlens-installed
TEST_STAMP := $(VENV)/.advlens-test-installed

.PHONY: demo test install install-test docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1 -e ".[test]"
	touch $@

install: $(STAMP)
install-test: $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/advlens demo --out advlens-demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

DOCS_VENV ?= .venv-docs
DOCS_STAMP := $(DOCS_VENV)/.advlens-docs-installed

$(DOCS_STAMP): docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PY) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/pip install --quiet -r docs/requirements.txt
	touch $@

# The documentation site (mkdocs + mkdocstrings, its own venv): broken links and docstring warnings fail it.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) advlens-demo .pytest_cache
