# `make help` lists the targets. Extra config overrides: make train ARGS="train.epochs=3 model.name=resnet18"
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data/synth
NPROC ?= 1
CONFIG ?=
SWEEP ?= grid
ARGS ?=
IMAGE ?= baseline:latest
CONFIG_ARG := $(foreach f,$(CONFIG),--config $(f))  # CONFIG="team.yaml exp.yaml": stacked, later wins

.DEFAULT_GOAL := help
.PHONY: help venv lock config docs data split check audit review train cv refit pseudo lr-find submit submissions gpus sweep sweep-report sweep-dashboard sweep-agent bench bench-loader bench-recipe bench-pretrained bench-contest gpu-check gpu-test runs tensorboard pictures test test-fast lint docker-build docker-smoke docker-train docker-submit clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-14s %s\n", $$1, $$2}'

LOCK := requirements.lock
PIP_VERSION := 25.1.1

# Every package at the lock's exact version and hash, then the kit itself without dependencies.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "pip==$(PIP_VERSION)"
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

venv: $(STAMP) ## create .venv from requirements.lock (done by every target on first use)

lock: $(STAMP) ## re-resolve requirements.lock after editing pyproject.toml (ARGS=--upgrade: newest of everything)
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra ray --universal --generate-hashes $(ARGS) -o $(LOCK)

$(DATA)/train/train.csv: | $(STAMP)
	$(BIN)/baseline data synth data.root=$(DATA)

data: $(DATA)/train/train.csv ## write the built-in dataset to data/synth (if it is not there)

config: $(STAMP) ## print every config key: the value a run would use (auto: what it resolves to here), default, meaning
	$(BIN)/baseline config $(CONFIG_ARG) $(ARGS)

docs: $(STAMP) ## regenerate docs/config.md and the README's commands table from the code (a test fails while stale)
	$(BIN)/python -m baseline.reference

split: $(STAMP) ## write the shared k-fold split file (ARGS="split.folds=5")
	$(BIN)/baseline data split $(CONFIG_ARG) $(ARGS)

check: $(STAMP) ## report on the data: classes, folds, sizes, unreadable files, duplicates
	$(BIN)/baseline data check $(CONFIG_ARG) $(ARGS)

audit: $(STAMP) ## label issues from an experiment's out-of-fold predictions (EXPERIMENT=runs/<name>; ARGS="--corrections fixes.csv")
	@test -n "$(EXPERIMENT)" || { echo "usage: make audit EXPERIMENT=runs/<name>"; exit 2; }
	$(BIN)/baseline data audit $(EXPERIMENT) $(CONFIG_ARG) $(ARGS)

review: $(STAMP) ## a page to accept or reject the audit's flags, beside label_issues.csv (EXPERIMENT=runs/<name>)
	@test -n "$(EXPERIMENT)" || { echo "usage: make review EXPERIMENT=runs/<name>"; exit 2; }
	$(BIN)/baseline data review $(EXPERIMENT) $(CONFIG_ARG) $(ARGS)

# the built-in data set is written only for runs on it: not when ARGS or a CONFIG file name their own data
BUILTIN := $(if $(findstring data.root=,$(ARGS))$(CONFIG),,data)

train: $(STAMP) $(BUILTIN) ## train (CONFIG=file.yaml, ARGS="key=value ...", NPROC=N for torchrun)
	$(BIN)/baseline train --nproc $(NPROC) $(CONFIG_ARG) $(ARGS)

cv: $(STAMP) $(BUILTIN) ## train every fold as one experiment: runs/<name>/fold<k>/, cv.json, oof.csv (again: resumes)
	$(BIN)/baseline cv --nproc $(NPROC) $(CONFIG_ARG) $(ARGS)

refit: $(STAMP) ## after make cv: every fold together for the epochs the folds chose (EXPERIMENT=runs/<name>)
	@test -n "$(EXPERIMENT)" || { echo "usage: make refit EXPERIMENT=runs/<name>"; exit 2; }
	$(BIN)/baseline refit $(EXPERIMENT) --nproc $(NPROC) $(ARGS)

pseudo: $(STAMP) ## pseudo-labels from confident test predictions: pseudo/<name>.csv (ARGS="submit.ensemble=ensembles/x.yaml")
	$(BIN)/baseline pseudo $(CONFIG_ARG) $(ARGS)

lr-find: $(STAMP) $(BUILTIN) ## an LR range test on this config: runs/lr-find/<name>/lr_find.png and a suggested optim.lr
	$(BIN)/baseline lr-find $(CONFIG_ARG) $(ARGS)

submissions: $(STAMP) ## the submission ledger: CV next to LB, their rank correlation, submissions/cv_vs_lb.png
	$(BIN)/baseline submissions $(CONFIG_ARG) $(ARGS)

gpus: $(STAMP) ## one line per visible GPU: free / total memory, this process's and other processes' use
	$(BIN)/baseline gpus

submit: $(STAMP) ## write submissions/<run>.csv from the newest run (ARGS="submit.checkpoints=[runs/a,runs/b]")
	$(BIN)/baseline submit $(CONFIG_ARG) $(ARGS)

sweep: $(STAMP) $(BUILTIN) ## run a sweep with Optuna, one run per trial (SWEEP=grid|random|bayes|file.yaml, NPROC, ARGS="sweep.storage=postgresql://..." to share it)
	$(BIN)/baseline sweep $(SWEEP) --nproc $(NPROC) $(CONFIG_ARG) $(ARGS)

sweep-report: $(STAMP) ## a sweep's trials, parameter importances and two pictures in its folder (SWEEP=name)
	$(BIN)/baseline sweep-report $(SWEEP) $(CONFIG_ARG) $(ARGS)

sweep-dashboard: $(STAMP) ## serve a sweep's study live on localhost with optuna-dashboard (SWEEP=name, PORT=8080)
	$(BIN)/baseline sweep-dashboard $(SWEEP) --port $(or $(PORT),8080) $(CONFIG_ARG) $(ARGS)

sweep-agent: $(STAMP) ## join a W&B sweep made with `wandb sweep FILE` (SWEEP_ID=entity/project/id)
	@test -n "$(SWEEP_ID)" || { echo "usage: make sweep-agent SWEEP_ID=entity/project/id"; exit 2; }
	$(BIN)/wandb agent $(SWEEP_ID)

bench: $(STAMP) data ## images/s: a plain in-memory step (limit) vs the kit's step vs the kit with its loader vs a naive PIL loader
	$(BIN)/baseline bench $(CONFIG_ARG) $(ARGS)

bench-loader: $(STAMP) data ## the training loader alone at 224 px: img/s per worker count, workers a 3,000 img/s GPU needs
	$(BIN)/baseline bench loader $(CONFIG_ARG) $(ARGS)

bench-recipe: $(STAMP) ## kit defaults vs the strongest simple loop (best of 4 LRs) on 10 data sets, 3 seeds, test F1 (~2 h on 2 cores; ARGS="bench.tiny=true")
	$(BIN)/baseline bench recipe $(CONFIG_ARG) $(ARGS)

bench-pretrained: $(STAMP) ## kit pretrained defaults vs the strongest simple fine-tuning loop on real ImageNet weights, 4 sets, 3 seeds, test F1 (~45 min on 2 cores)
	$(BIN)/baseline bench recipe bench.pretrained=true $(CONFIG_ARG) $(ARGS)

bench-contest: $(STAMP) ## each contest technique against a plain run on 3 contest-like sets (contest_c held out); ARGS="bench.seeds=1"
	$(BIN)/baseline bench contest $(CONFIG_ARG) $(ARGS)

gpu-check: $(STAMP) data ## one table for a lent GPU: train step vs limit (eager, compile), batch auto, forced OOM, inference (ARGS="bench.tiny=true" on a CPU)
	$(BIN)/baseline bench gpu $(ARGS)

gpu-test: $(STAMP) ## the GPU tier (pytest -m gpu): bf16 + channels_last, compile, OOM = one line, NCCL, pinned loader
	$(BIN)/pytest -q -m gpu $(ARGS)

runs: $(STAMP) ## the local leaderboard: runs sorted by best macro-F1
	$(BIN)/baseline runs $(ARGS)

tensorboard: $(STAMP) ## serve the TensorBoard files of every run under runs/ (runs with log.tensorboard=true)
	$(BIN)/tensorboard --logdir runs --bind_all

PICTURES := docs/pictures
pictures: $(STAMP) data ## redraw the README's pictures of the built-in data into docs/pictures/ (~2 min)
	$(BIN)/baseline data check check.out=$(PICTURES)
	rm -rf runs/docs-pictures
	$(BIN)/baseline train run.name=docs-pictures train.epochs=3 log.wandb.mode=disabled
	cp runs/docs-pictures/{learning_curves,confusion_matrix,per_class_f1,worst_predictions}.png $(PICTURES)/

test: $(STAMP) ## run the whole test suite (slow end-to-end tests included; installs PostgreSQL and Chromium for the sweep tests if it may)
	.ci/postgres
	.ci/chromium
	$(BIN)/pytest -q $(ARGS)

test-fast: $(STAMP) ## the unit tests only (nothing trains), well under a minute
	$(BIN)/pytest -q -m "not slow" $(ARGS)

lint: $(STAMP) ## ruff, the package's import floors (lint-imports) and hadolint
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

docker-build: ## build the image (ARGS="--build-arg BASE=<image>"; extra CA certs: certs/*.crt)
	docker build $(ARGS) -t $(IMAGE) .

docker-smoke: ## build the image from a local debootstrap base and run synth -> train -> submit in it (root; ~6.5 min)
	bash .ci/docker-smoke

docker-train: ## train inside the image on all GPUs (data/, runs/ mounted)
	docker run --rm --gpus all --ipc=host -v $(CURDIR)/data:/app/data -v $(CURDIR)/runs:/app/runs \
		-e WANDB_API_KEY $(IMAGE) baseline train --nproc $(NPROC) $(ARGS)

docker-submit: ## write a submission inside the image (data/, runs/, submissions/ mounted)
	docker run --rm --gpus all --ipc=host -v $(CURDIR)/data:/app/data -v $(CURDIR)/runs:/app/runs \
		-v $(CURDIR)/submissions:/app/submissions $(IMAGE) baseline submit $(ARGS)

clean: ## remove runs/, submissions/*.csv and caches (keeps data/, .venv and the team's submissions/ledger.csv)
	rm -rf runs .pytest_cache .ruff_cache
	find submissions -maxdepth 1 -name '*.csv' ! -name ledger.csv -delete 2>/dev/null || true
