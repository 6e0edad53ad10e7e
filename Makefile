# Two entry points a new user needs; each does its own set-up.
#   make demo   Forecasting Model Search over the embedded digits hub (the main job)
#   make test   run the whole test suite
# Also: make demo-nadamw (the digits CNN with a NAdamW-list preset), make bench-optim.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-nadamw test bench-optim install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fms-lightning tune digits_hub $(ARGS)

demo-nadamw: $(STAMP)
	$(BIN)/fms-lightning demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-optim: $(STAMP)
	$(BIN)/python scripts/bench_nadamw.py

clean:
	rm -rf $(VENV) build *.egg-info lightning_logs
