"""Shared fixtures: one small built-in dataset (written once per session; `synth_copy` for a test
that edits it), the few-second training config (`tiny_overrides`, or the `tiny` fixture), one
`cfg_for` helper, and a throwaway PostgreSQL server for the sweep tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from baseline.config import Config, load_config
from baseline.data.synth import write_synth

# Tests never reach for a network or an API key.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """30 people in the competition layout (210 train images, 49 eval images)."""
    return write_synth(tmp_path_factory.mktemp("synth"), people=30, seed=0)


@pytest.fixture(scope="session")
def tiny_cv(synth_root, tmp_path_factory) -> Path:
    """One tiny 3-fold experiment on the shared data, trained once for every test that only reads it."""
    from baseline.cli import main

    runs = tmp_path_factory.mktemp("cv")
    over = tiny_overrides(synth_root, runs, **{"run.name": "exp", "train.epochs": 8, "data.img_size": 48})
    assert main(["cv", *over]) == 0
    return runs / "exp"


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    """A private copy of the shared dataset, for a test that edits its files."""
    return Path(shutil.copytree(synth_root, tmp_path / "data"))


def cfg_for(root: Path, **overrides) -> Config:
    """The default config on `root`, with `key=value` overrides (dots in keys: pass a dict with **)."""
    return load_config(None, [f"data.root={root}", *[f"{k}={v}" for k, v in overrides.items()]])


@pytest.fixture
def tiny(synth_root, tmp_path):
    """tiny_overrides on the shared data with runs under this test's tmp_path/runs: tiny(**extra)."""
    return lambda **extra: tiny_overrides(synth_root, tmp_path / "runs", **extra)


def tiny_overrides(root: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "data.root": str(root), "data.img_size": 32, "data.num_workers": 0, "model.name": "test_resnet",
        "train.epochs": 1, "train.batch_size": 16, "log.wandb.mode": "disabled", "run.dir": str(run_dir),
        "split.folds": 3, "optim.lr": 0.005,
        "log.figures": False,  # drawing them takes longer than a tiny run trains; the tests of pictures turn them on
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


def pytest_addoption(parser):
    parser.addoption("--record-golden", action="store_true",
                     help="write tests/golden/ from this code (only when a change of behaviour is meant)")
