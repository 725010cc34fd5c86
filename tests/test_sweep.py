"""Sweeps: the W&B file mapped onto Optuna (every supported key, a refusal for every other), the
study's bookkeeping (run_cap over workers, grid points taken once, dead workers' trials retried),
pruning across DDP ranks, and two workers sharing a study on a real PostgreSQL server."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from baseline.cli import main
from baseline.config import ConfigError, load_config
from baseline.dist import Env
from baseline.rundir import _alive
from baseline.sweeps import plan as plans
from baseline.sweeps import sweep
from baseline.sweeps.study import pruner
from baseline.sweeps.trial import Reporter

BASE = {"method": "grid", "metric": {"name": "val_f1", "goal": "maximize"},
        "parameters": {"optim.lr": {"values": [0.1]}}}


def plan_of(spec: dict, epochs: int = 10) -> plans.Plan:
    return plans.plan_sweep(spec, "s.yaml", epochs)


def write(tmp_path, spec) -> str:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(spec))
    return str(p)


# ---------------------------------------------------------------- the mapping
@pytest.mark.parametrize("name", ["grid", "random", "bayes"])
def test_packaged_sweeps_map_onto_optuna(name):
    path = plans.sweep_file(name)
    spec = plans.read_sweep(path)
    plan = plans.plan_sweep(spec, path, 10)
    assert plan.method == name and plan.metric == "val_f1" and plan.goal == "maximize"
    assert "${args_no_hyphens}" in spec["command"] and "baseline" in spec["command"]  # `wandb sweep` runs it too
    sampler = plan.sampler(0, 4)
    assert isinstance(sampler, {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler,
                                "bayes": optuna.samplers.TPESampler}[name])
    if name == "bayes":
        assert plan.hyperband == {"min_resource": 1, "max_resource": 10, "reduction_factor": 3}
        assert plans.read_sweep(plans.sweep_file("random"))["parameters"] == spec["parameters"]  # the same search
        assert plan.cap == plan_of(plans.read_sweep(plans.sweep_file("random"))).cap == 12


@pytest.mark.parametrize("param, expected", [
    ({"values": [1, 2]}, CategoricalDistribution([1, 2])),
    ({"values": [[64, 48], [96, 72]]}, CategoricalDistribution(["[64, 48]", "[96, 72]"])),
    ({"distribution": "categorical", "values": ["a", "b"]}, CategoricalDistribution(["a", "b"])),
    ({"distribution": "int_uniform", "min": 1, "max": 4}, IntDistribution(1, 4)),
    ({"min": 1, "max": 4}, IntDistribution(1, 4)),  # W&B infers int_uniform from integer bounds
    ({"min": 0.5, "max": 4}, FloatDistribution(0.5, 4.0)),  # and uniform otherwise
    ({"distribution": "uniform", "min": 0.0, "max": 0.5}, FloatDistribution(0.0, 0.5)),
    ({"distribution": "q_uniform", "min": 0.0, "max": 0.2, "q": 0.05}, FloatDistribution(0.0, 0.2, step=0.05)),
    ({"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, FloatDistribution(1e-4, 1e-2, log=True)),
    ({"distribution": "log_uniform", "min": -4, "max": 0}, FloatDistribution(math.exp(-4), 1.0, log=True)),
])
def test_every_supported_distribution_maps_to_its_optuna_twin(param, expected):
    assert plans.parameter("k", param, "random", "w") == expected


@pytest.mark.parametrize("param, choices", [
    ({"distribution": "int_uniform", "min": 2, "max": 4}, [2, 3, 4]),
    ({"distribution": "q_uniform", "min": 0.0, "max": 0.2, "q": 0.1}, [0.0, 0.1, 0.2]),
])
def test_a_grid_enumerates_the_discrete_distributions(param, choices):
    assert plans.parameter("k", param, "grid", "w").choices == tuple(choices)


def test_constants_go_to_every_trial_and_grid_size_is_the_cap():
    plan = plan_of({**BASE, "parameters": {"optim.lr": {"values": [0.1, 0.2]},
                                          "train.label_smoothing": {"values": [0, 0.1, 0.2]},
                                          "model.name": {"value": "resnet18"},
                                          "train.epochs": {"distribution": "constant", "value": 3}}})
    assert plan.constants == {"model.name": "resnet18", "train.epochs": 3}
    assert set(plan.space) == {"optim.lr", "train.label_smoothing"}
    assert plan.cap == 6
    assert plan_of({**BASE, "run_cap": 2, "parameters": {"optim.lr": {"values": [0.1, 0.2, 0.3]}}}).cap == 2
    unbounded = {**BASE, "method": "random", "parameters": {"optim.lr": {"min": 0.1, "max": 0.2}}}
    assert plan_of(unbounded).cap == plans.DEFAULT_CAP


@pytest.mark.parametrize("early, expected", [
    ({"type": "hyperband", "min_iter": 2}, (2, 10, 3)),  # max: train.epochs
    ({"type": "hyperband", "min_iter": 1, "max_iter": 9, "eta": 3}, (1, 9, 3)),
    ({"type": "hyperband", "max_iter": 8, "s": 2, "eta": 2}, (2, 8, 2)),  # W&B: brackets at max_iter / eta^k
    ({"type": "hyperband", "min_iter": 1, "eta": 2, "strict": False}, (1, 10, 2)),
])
def test_hyperband_maps_to_optunas_resources_in_epochs(early, expected):
    plan = plan_of({**BASE, "early_terminate": early})
    hb = plan.hyperband
    assert (hb["min_resource"], hb["max_resource"], hb["reduction_factor"]) == expected
    assert isinstance(pruner(plan.hyperband), optuna.pruners.HyperbandPruner)


def test_metric_target_stops_the_sweep_once_reached(tmp_path):
    plan = plan_of({**BASE, "method": "random", "run_cap": 5, "metric": {**BASE["metric"], "target": 0.9},
                    "parameters": {"optim.lr": {"min": 0.1, "max": 0.2}}})
    study = optuna.create_study(direction="maximize")
    worker = sweep.Worker(plan, study, tmp_path, "", [], 1)
    dist = {"optim.lr": FloatDistribution(0.1, 0.2)}
    study.add_trial(create_trial(params={"optim.lr": 0.1}, distributions=dist, value=0.5))
    assert worker.room()
    study.add_trial(create_trial(params={"optim.lr": 0.1}, distributions=dist, value=0.95))
    assert not worker.room()


@pytest.mark.parametrize("change, message", [
    ({"method": "hyperband"}, "method must be one of"),
    ({"paramters": {}}, "unknown key"),
    ({"metric": {"name": "val_f1", "goal": "up"}}, "goal"),
    ({"metric": {"name": "val_auc", "goal": "maximize"}}, "metric.name 'val_auc'"),
    ({"metric": {"name": "val_f1", "goal": "maximize", "window": 3}}, "metric has unknown key"),
    ({"run_cap": 0}, "run_cap must be a positive integer"),
    ({"parameters": {"optim.lr": {"values": [0.1, 0.2]}, "train.monitor": {"value": "val_loss"}}},
     "train.monitor is set by metric.name"),
    ({"parameters": {"optim.lrr": {"values": [0.1]}}}, "unknown config key 'optim.lrr'"),
    ({"parameters": {"train.epochs": {"values": ["many"]}}}, "train.epochs"),
    ({"parameters": {"optim.lr": {"distribution": "gaussian_mix", "min": 0, "max": 1}}}, "unknown distribution"),
    ({"parameters": {"optim.lr": {"distribution": "uniform", "min": 0, "max": 1}}},
     "grid parameter 'optim.lr' needs values"),
    ({"parameters": {"optim.lr": {"distribution": "uniform", "min": 1, "max": 0}}}, "min < max"),
    ({"parameters": {"optim.lr": {"distribution": "log_uniform_values", "min": 0, "max": 1}}}, "min > 0"),
    ({"parameters": {"optim.lr": {"values": [0.1, 0.2], "probabilities": [0.5, 0.5]}}}, "probabilities"),
    ({"parameters": {"optim.lr": {"q": 1}}}, "needs values, value or a distribution"),
    ({"parameters": {"model.name": {"value": "resnet18"}}}, "nothing to search"),
    ({"early_terminate": {"type": "envelope"}}, "early_terminate.type must be hyperband"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "strict": True}}, "strict"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "bands": 2}}, "unknown key.*bands"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1}}, "eta must be an integer >= 2"),
    ({"early_terminate": {"type": "hyperband", "max_iter": 9}}, "needs min_iter"),
    ({"early_terminate": {"type": "hyperband", "min_iter": 5, "max_iter": 2}}, "min_iter <= max_iter"),
] + [({"method": "random", "parameters": {"optim.lr": {"distribution": d, "min": 0.1, "max": 1.0}}},
      f"'{d}' cannot run locally")
     for d in sorted(plans.REFUSED)])
def test_what_cannot_be_mapped_is_refused_by_name_before_any_trial(tmp_path, change, message):
    spec = {**BASE, **change}
    with pytest.raises(ConfigError, match=message):
        sweep.run(write(tmp_path, spec), None, [f"run.dir={tmp_path / 'runs'}"])
    assert not (tmp_path / "runs").exists()


def test_random_draws_depend_on_seed_and_trial_number_only():
    plan = plans.read_sweep(plans.sweep_file("random"))
    plan = plan_of(plan)

    def draws(seed, numbers):
        study = optuna.create_study(sampler=plan.sampler(seed, 4))
        out = {}
        for n in range(max(numbers) + 1):
            t = study.ask()
            out[n] = {k: sweep.suggest(t, k, d) for k, d in plan.space.items()}
        return [out[n] for n in numbers]

    a, b = draws(1, [0, 1, 2]), draws(1, [0, 1, 2])
    assert a == b and a[0] != a[1] and draws(2, [0])[0] != a[0]
    for t in a:
        assert 0.0003 <= t["optim.lr"] <= 0.01 and t["train.batch_size"] in (32, 64)
        assert t["train.label_smoothing"] in (0.0, 0.05, 0.1, 0.15, 0.2)
    tpe = optuna.create_study(sampler=plan_of(plans.read_sweep(plans.sweep_file("bayes"))).sampler(1, 4))
    startup = [{k: sweep.suggest(t, k, d) for k, d in plan.space.items()} for t in (tpe.ask() for _ in range(3))]
    assert startup == a  # bayes starts with exactly random's trials: the comparison is fair


# ---------------------------------------------------------------- the study's bookkeeping
def frozen(state, **kw):
    return create_trial(state=state, params={"optim.lr": 0.1},
                        distributions={"optim.lr": CategoricalDistribution([0.1])},
                        value=0.5 if state == TrialState.COMPLETE else None, **kw)


def test_run_cap_counts_running_queued_done_and_own_failures_not_dead_workers(tmp_path):
    plan = plan_of({**BASE, "method": "random", "run_cap": 3})
    study = optuna.create_study(direction="maximize")
    worker = sweep.Worker(plan, study, tmp_path, "", [], 1)
    study.add_trial(frozen(TrialState.COMPLETE))
    study.add_trial(frozen(TrialState.FAIL, user_attrs={"error": "bad batch size"}))  # its own failure counts
    study.add_trial(frozen(TrialState.FAIL))  # a dead worker's: its retry counts instead
    study.add_trial(frozen(TrialState.FAIL, user_attrs={"skipped": "run_cap reached"}))
    assert worker.room()
    study.add_trial(frozen(TrialState.PRUNED))
    assert not worker.room()
    study.add_trial(frozen(TrialState.WAITING))  # a retry waiting to run is always run
    assert worker.room()


def test_of_two_racing_trials_the_later_one_stands_down(tmp_path):
    plan = plan_of({**BASE, "run_cap": 1})
    study = optuna.create_study(direction="maximize")
    worker = sweep.Worker(plan, study, tmp_path, "", [], 1)
    first, second = study.ask(), study.ask()  # two workers asked at the same moment
    worker.claim(first)
    with pytest.raises(sweep.Skipped, match="run_cap"):
        worker.claim(second)
    assert second.user_attrs["skipped"] == "run_cap reached"


def study_with_leaders(tmp_path, early: dict, leaders: int):
    """A sweep study on SQLite whose earlier trials all reached val_f1 = 1.0 at epoch 1 (hyperband's
    first rung), so any real trial is pruned there."""
    spec = {**BASE, "name": "p", "method": "random", "run_cap": leaders + 1, "early_terminate": early,
            "parameters": {"optim.lr": {"values": [0.005]}}}
    path = write(tmp_path, spec)
    cfg = load_config(None, [f"run.dir={tmp_path / 'runs'}", "train.epochs=3"])
    plan = plans.plan_sweep(plans.read_sweep(path), path, 3)
    sweep_dir = tmp_path / "runs" / "sweeps" / "p"
    sweep_dir.mkdir(parents=True)
    url = sweep.storage_url(cfg.sweep, sweep_dir)
    study = sweep.open_study(plan, cfg, url)
    for _ in range(leaders):
        study.add_trial(create_trial(params={"optim.lr": 0.005}, distributions=dict(plan.space), value=1.0,
                                     intermediate_values={1: 1.0}, system_attrs={"completed_rung_0": 1.0}))
    return study, path, url


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # the test asks trials itself, outside optimize
def test_reporter_prunes_a_trial_behind_the_rung_but_never_after_its_last_epoch(tmp_path):
    study, _, url = study_with_leaders(tmp_path, {"type": "hyperband", "min_iter": 1, "eta": 4}, 3)

    def reporter():
        trial_id = study.ask()._trial_id
        return Reporter(load_config(None, [f"sweep.storage={url}", "sweep.study=p", f"sweep.trial={trial_id}"]), Env())

    assert not reporter().should_stop(1, {"val_f1": 0.2}, last=True)  # a 1-epoch trial completes
    assert reporter().should_stop(1, {"val_f1": 0.2}, last=False)
    assert study.trials[-1].intermediate_values == {1: 0.2}
    assert not Reporter(load_config(None, []), Env()).should_stop(1, {"val_f1": 0.0}, last=False)  # not a sweep


# ---------------------------------------------------------------- end to end
@pytest.mark.slow
def test_grid_runs_every_point_once_and_a_rerun_runs_nothing(tiny, tmp_path):
    spec = {**BASE, "name": "g", "parameters": {"optim.lr": {"values": [0.001, 0.01]},
                                                "train.label_smoothing": {"values": [0.1]}}}
    path = write(tmp_path, spec)
    base = tiny(**{"train.monitor": "val_loss"})  # the sweep's metric (val_f1) decides instead
    table = sweep.run(path, None, base)
    assert len(table) == 2 and (table.status == "complete").all() and table.val_f1.is_monotonic_decreasing
    assert sorted(table["optim.lr"]) == [0.001, 0.01]
    sweep_dir = tmp_path / "runs" / "sweeps" / "g"
    assert len(pd.read_csv(sweep_dir / "results.csv")) == 2
    best = load_config(sweep_dir / "best.yaml")  # ready for --config
    assert best.run.name == "" and best.sweep.trial == -1 and best.optim.lr == table.iloc[0]["optim.lr"]
    # each trial keeps its best epoch by the sweep's metric (BASE: val_f1), whatever the base config says
    assert {load_config(p).train.monitor for p in sweep_dir.glob("*/config.yaml")} == {spec["metric"]["name"]}

    stamps = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/summary.json")}
    again = sweep.run(path, None, base)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and len(again) == 2
    assert len(optuna.load_study(study_name="g", storage=f"sqlite:///{sweep_dir / 'study.db'}").trials) == 2

    spec["parameters"]["optim.lr"]["values"].append(0.003)  # another file under the same name
    with pytest.raises(ConfigError, match="different sweep file"):
        sweep.run(write(tmp_path, spec), None, base)


@pytest.mark.slow
def test_a_failing_trial_is_recorded_with_its_error_and_the_cli_exits_1(tiny, tmp_path):
    path = write(tmp_path, {**BASE, "name": "f"})
    assert main(["sweep", path, *tiny(**{"train.batch_size": 100000})]) == 1  # no trial complete
    table = pd.read_csv(tmp_path / "runs" / "sweeps" / "f" / "results.csv")
    assert table.status.tolist() == ["failed"] and "batch_size" in table.error[0]
    assert (tmp_path / "runs" / "sweeps" / "f" / "trial000.log").is_file()


@pytest.mark.slow
def test_a_pruned_ddp_trial_stops_on_every_rank_and_is_recorded_pruned(tiny, tmp_path):
    study, path, _ = study_with_leaders(tmp_path, {"type": "hyperband", "min_iter": 1, "eta": 4}, 3)
    base = tiny(**{"train.epochs": 3})
    r = subprocess.run([sys.executable, "-m", "baseline", "sweep", path, "--nproc", "2", *base],
                       capture_output=True, text=True, timeout=300)  # a rank left behind would hang in a collective
    assert r.returncode == 0, r.stdout + r.stderr
    trial = optuna.load_study(study_name="p", storage=study._storage).trials[-1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    run_dir = tmp_path / "runs" / "sweeps" / "p" / "trial003"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["pruned_epoch"] == 1 and summary["epochs_done"] == 1
    assert summary["world_size"] == 2 and len(pd.read_csv(run_dir / "metrics.csv")) == 1
    assert "pruned by the sweep after epoch 1" in (run_dir / "train.log").read_text()
    table = pd.read_csv(tmp_path / "runs" / "sweeps" / "p" / "results.csv")
    assert table.set_index("trial").loc["trial003", "status"] == "pruned"


def worker_cmd(path, base, *extra):
    return [sys.executable, "-m", "baseline", "sweep", path, *base, *extra]


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_by_another_worker_from_its_last_checkpoint(tiny, tmp_path):
    path = write(tmp_path, {**BASE, "name": "k", "method": "random", "run_cap": 1,
                            "parameters": {"optim.lr": {"min": 0.001, "max": 0.01}}})
    base = tiny(**{"train.epochs": 4})
    beats = ["sweep.heartbeat_s=1", "sweep.grace_s=3"]
    run_dir = tmp_path / "runs" / "sweeps" / "k" / "trial000"
    a = subprocess.Popen(worker_cmd(path, base, *beats), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.pt").is_file():
        assert time.time() < deadline and a.poll() is None, "worker A never finished an epoch"
        time.sleep(0.05)
    trainer = json.loads((run_dir / ".lock").read_text())["pid"]
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    killed = time.time()
    while _alive(trainer):  # the kernel takes the trial's run down with its worker
        assert time.time() < killed + 10, "the killed worker's trial kept training"
        time.sleep(0.1)
    assert not (run_dir / "summary.json").exists()
    time.sleep(max(0.0, killed + 4 - time.time()))  # past the grace period
    b = subprocess.run(worker_cmd(path, base, *beats), capture_output=True, text=True, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{run_dir.parent / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    retry = study.trials[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == study.trials[0].params
    assert retry.user_attrs["run"] == "trial000" and not retry.user_attrs["worker"].endswith(f":{a.pid}")
    assert "resumed from epoch" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["epochs_done"] == 4


@pytest.mark.slow
def test_two_workers_on_postgresql_split_a_4_point_grid_without_duplicates(tiny, tmp_path, postgres_url):
    spec = {**BASE, "name": "pg", "parameters": {"optim.lr": {"values": [0.001, 0.01]},
                                                 "train.label_smoothing": {"values": [0.0, 0.1]}}}
    path = write(tmp_path, spec)
    base = tiny()
    cmd = worker_cmd(path, base, f"sweep.storage={postgres_url}")
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    ran = [t for t in study.trials if "skipped" not in t.user_attrs]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 4
    assert len({tuple(sorted(t.params.items())) for t in ran}) == 4
    assert len({t.user_attrs["worker"] for t in ran}) == 2  # both workers took trials
    folders = sorted(p.parent.name for p in (tmp_path / "runs" / "sweeps" / "pg").glob("trial*/summary.json"))
    assert folders == sorted(t.user_attrs["run"] for t in ran) and len(folders) == 4
    again = sweep.run(path, None, [*base, f"sweep.storage={postgres_url}"])
    assert len(again) == 4 and (again.status == "complete").all()
    assert len(optuna.load_study(study_name="pg", storage=postgres_url).trials) == len(study.trials)
