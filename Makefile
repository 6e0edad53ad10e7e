# Two entry points a new user needs; each does its own set-up.
#   make demo   Forecasting Model Search over the embedded digits hub (the main job)
#   make test   run the whole test suite
# Also: make demo-nadamw (the digits CNN with a NAdamW-list preset), make bench (BENCHMARKS.md, with the Optuna
# peers of the bench extra), make bench-optim,
# make bench-ray (1 against 2 Ray workers).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo demo-nadamw test bench bench-optim bench-ray install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray]'
	touch $(STAMP)

# The bench extra (Optuna, pure Python): the benchmark's peers, and their tests in `make test`.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,ray,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fms-lightning tune digits_hub $(ARGS)

demo-nadamw: $(STAMP)
	$(BIN)/fms-lightning demo $(ARGS)

test: $(BENCH_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The benchmark suite of BENCHMARKS.md (builds take several minutes each, the zoo's ~20 min on 2 idle cores;
# runs take hours on 2 cores). `--methods all` includes the Optuna peers (a few seconds per run).
BENCH_RUN := --size full --methods all --seeds 10 --candidates 128 --initial-steps 200 --refine-steps 20 --lr 1e-3 \
	--pretrain-steps 200 --transfer
bench: $(BENCH_STAMP)
	$(BIN)/fms-lightning bench build --size full --hub cnn diverse --task mirror rotate
	$(BIN)/fms-lightning bench build --size full --hub zoo --task mirror rotate fewshot
	$(BIN)/fms-lightning bench run --hub cnn --task mirror $(BENCH_RUN)
	$(BIN)/fms-lightning bench run --hub diverse --task mirror $(BENCH_RUN)
	$(BIN)/fms-lightning bench run --hub zoo --task mirror fewshot $(BENCH_RUN)
	$(BIN)/fms-lightning bench report --preamble docs/bench/preamble.md --epilogue docs/bench/findings.md docs/lists-benchmark.md

bench-optim: $(STAMP)
	$(BIN)/python scripts/bench_nadamw.py

# 1 against 2 Ray workers on a fixed budget (docs/bench/ray.md, ~6 min).
bench-ray: $(STAMP)
	$(BIN)/python scripts/bench_ray.py

clean:
	rm -rf $(VENV) build *.egg-info lightning_logs
