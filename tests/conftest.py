"""Shared fixtures: a small built-in dataset (written once per session) and a few-second config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from baseline.data.synth import write_synth

# Tests never reach for a network or an API key.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """30 people in the competition layout (210 train images, 49 eval images)."""
    return write_synth(tmp_path_factory.mktemp("synth"), people=30, seed=0)


def tiny_overrides(root: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "data.root": str(root), "data.img_size": 32, "data.num_workers": 0, "model.name": "test_resnet",
        "train.epochs": 1, "train.batch_size": 16, "log.wandb.mode": "disabled", "run.dir": str(run_dir),
        "split.folds": 3, "optim.lr": 0.005,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on localhost for this session (see tests/postgres.py). CI must have
    it (.ci/postgres installs it); elsewhere the test is skipped with the way to get it."""
    from tests.postgres import Cluster, bin_dir

    bins = bin_dir()
    if bins is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed; .ci/postgres should have installed it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql, or run .ci/postgres as root)")
    cluster = Cluster(bins)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
