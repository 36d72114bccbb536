# The two commands the README opens with.  Each installs what is missing first.
PYTHON ?= python3
NPROC ?= 2

.PHONY: setup quickstart train-quickstart test bench

setup:
	@PYTHON=$(PYTHON) bash scripts/setup_env.sh

quickstart: setup
	$(PYTHON) -m deepspeed.launcher.runner --num_gpus $(NPROC) megaproc/train.py --config configs/quickstart.yaml

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) bench/train_throughput.py
