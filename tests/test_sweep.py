"""Sweeps: W&B-format files, grid and seeded random expansion, the local runner, resume, failures."""

import pandas as pd
import pytest
import yaml

from baseline.config import ConfigError, load_config
from baseline.sweep import (
    SAMPLERS,
    WANDB_DISTRIBUTIONS,
    read_sweep,
    run_local,
    sweep_file,
    trials,
    validate_sweep,
)
from tests.conftest import tiny_overrides


@pytest.mark.parametrize("name", ["grid", "random"])
def test_packaged_sweeps_are_valid_wandb_files(name):
    path = sweep_file(name)
    spec = read_sweep(path)
    validate_sweep(spec, path)
    assert spec["method"] == name
    assert set(spec["metric"]) == {"name", "goal"} and spec["metric"]["name"] == "val_f1"
    assert "${args_no_hyphens}" in spec["command"] and "baseline" in spec["command"]
    for p in spec["parameters"].values():
        assert p.get("distribution", "categorical") in WANDB_DISTRIBUTIONS
    assert set(SAMPLERS) <= WANDB_DISTRIBUTIONS


def test_grid_expands_every_combination():
    spec = read_sweep(sweep_file("grid"))
    t = trials(spec, seed=0)
    assert len(t) == 4 and len({tuple(sorted(x.items())) for x in t}) == 4


def test_random_is_reproducible_for_a_seed_and_in_range():
    spec = read_sweep(sweep_file("random"))
    a, b, c = trials(spec, 1), trials(spec, 1), trials(spec, 2)
    assert a == b and a != c and len(a) == spec["run_cap"]
    for t in a:
        assert 0.0003 <= t["optim.lr"] <= 0.01
        assert t["train.label_smoothing"] in (0.0, 0.05, 0.1, 0.15, 0.2)
        assert t["train.batch_size"] in (32, 64) and t["model.name"] == "resnet18"


def write(tmp_path, spec):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


BASE = {"method": "grid", "metric": {"name": "val_f1", "goal": "maximize"}, "parameters": {"optim.lr": {"values": [0.1]}}}


@pytest.mark.parametrize("change, message", [
    ({"method": "hyperband"}, "method must be one of"),
    ({"parameters": {"optim.lr": {"distribution": "gaussian_mix", "min": 0, "max": 1}}}, "unknown distribution"),
    ({"parameters": {"optim.lrr": {"values": [0.1]}}}, "unknown config key 'optim.lrr'"),
    ({"parameters": {"train.epochs": {"values": ["many"]}}}, "train.epochs"),
    ({"parameters": {"optim.lr": {"distribution": "uniform", "min": 0, "max": 1}}}, "grid parameter 'optim.lr' needs values"),
    ({"metric": {"name": "val_f1", "goal": "up"}}, "goal"),
    ({"method": "bayes"}, "W&B server"),
    ({"paramters": {}}, "unknown key"),
])
def test_bad_sweep_file_is_rejected_before_any_trial(tmp_path, change, message):
    spec = {**BASE, **change}
    with pytest.raises(ConfigError, match=message):
        run_local(str(write(tmp_path, spec)), None, [f"run.dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs" / "sweeps" / "s").exists() or not any((tmp_path / "runs" / "sweeps" / "s").iterdir())


@pytest.mark.slow
def test_grid_2x2_runs_4_trials_resumes_and_records_failures(synth_root, tmp_path):
    spec = {**BASE, "name": "g", "parameters": {"optim.lr": {"values": [0.001, 0.01]},
                                                "train.label_smoothing": {"values": [0.0, 0.1]}}}
    path = write(tmp_path, spec)
    base = tiny_overrides(synth_root, tmp_path / "runs")
    table = run_local(str(path), None, base)
    assert len(table) == 4 and (table.status == "finished").all()
    assert table.val_f1.is_monotonic_decreasing
    sweep_dir = tmp_path / "runs" / "sweeps" / "g"
    assert len(pd.read_csv(sweep_dir / "results.csv")) == 4
    best = load_config(sweep_dir / "best.yaml")  # ready for --config
    assert best.run.name == "" and best.optim.lr == table.iloc[0]["optim.lr"]

    # Interrupted sweeps resume: finished trials are not run again (their folders stay untouched).
    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    spec["parameters"]["optim.lr"]["values"].append(0.003)  # two new trials, plus one that fails
    spec["parameters"]["train.label_smoothing"]["values"] = [0.0, 0.1]
    path.write_text(yaml.safe_dump(spec))
    table2 = run_local(str(path), None, base + ["train.batch_size=100000"])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(table2) == 6
    failed = table2[table2.status == "failed"]
    assert len(failed) == 2 and failed.error.str.contains("batch_size").all()
