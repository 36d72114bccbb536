# The two commands the README opens with.  Each installs what is missing first.
PYTHON ?= python3
NPROC ?= 2

.PHONY: setup quickstart quickstart-lm test bench

setup:
	@PYTHON=$(PYTHON) bash scripts/setup_env.sh

# The main job: splits -> curriculum pre-pretraining -> pretraining with mixin -> evaluate -> export,
# offline on the built-in default data, NPROC CPU processes (runs/pipeline).
quickstart: setup
	$(PYTHON) -m megaproc.pipeline --out-dir runs/pipeline --nproc $(NPROC)

# Plain language-model training on the built-in code corpus (runs/quickstart).
quickstart-lm: setup
	$(PYTHON) -m deepspeed.launcher.runner --num_gpus $(NPROC) megaproc/train.py --config configs/quickstart.yaml

test: setup
	$(PYTHON) -m pytest -q tests

bench: setup
	$(PYTHON) bench/train_throughput.py
