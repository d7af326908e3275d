# The commands of the README:
#   make demo   set up .venv (pinned) and run the main job
#   make test   set up .venv if needed and run the whole test suite
#   make web    set up .venv if needed and serve the web page on http://127.0.0.1:8766
VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.pocketseg-installed

.PHONY: setup demo test web lint benchmark
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pocketseg demo

test: setup
	$(PYTHON) -m pytest -q

web: setup
	$(VENV)/bin/pocketseg web

# Speed and memory side by side with the peers (MONAI is a benchmark-only extra); see docs/speed.md
benchmark: setup
	$(PYTHON) -m pip install --quiet -r benchmarks/requirements.txt
	$(PYTHON) -m benchmarks speed --device auto --output benchmarks/results

lint: setup
	$(VENV)/bin/ruff check .
