"""Sweeps in W&B's file format, executed by Optuna: grid / random / bayes (TPE), hyperband pruning,
and one study that any number of workers share through its storage (a SQLite file by default,
PostgreSQL across machines).

The same YAML works with `wandb sweep FILE` (its `command:` block runs our trainer with
`${args_no_hyphens}`) and with `baseline sweep FILE`, which needs no W&B server. Each trial is a
normal run (a subprocess; torchrun with --nproc) in runs/sweeps/<name>/trialNNN; its rank 0 reports
the metric to the study after every epoch and all ranks stop together when the pruner says so
(baseline/sweeps/trial.py). The study is the only bookkeeping: which trials ran, their state and value.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from .. import files
from ..config import Config, ConfigError, SweepCfg, config_flags, for_another_run, load_config, to_dict
from ..dist import die_with_parent, launch_command
from ..rundir import LOCK
from ..runfolder import RunFolder
from .launch import TrialFailed, override
from .plan import Plan, plan_sweep, read_sweep, sweep_file
from .study import pruner, storage

log = logging.getLogger("baseline")
ConfigFiles = str | list[str] | None  # --config, given none, once or several times
optuna.logging.set_verbosity(optuna.logging.WARNING)



class Skipped(Exception):
    """Another worker got there first (run_cap reached, or the same grid point)."""


# ---------------------------------------------------------------- the study
def storage_url(sw: SweepCfg, sweep_dir: Path) -> str:
    return sw.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_study(plan: Plan, cfg: Config, url: str) -> optuna.Study:
    """Create the study, or join it; refuse one made from another sweep file."""
    study = optuna.create_study(study_name=plan.name, storage=storage(url, cfg.sweep), direction=plan.goal,
                                sampler=plan.sampler(cfg.seed, cfg.sweep.startup_trials),
                                pruner=pruner(plan.hyperband), load_if_exists=True)
    mine, theirs = plan.record(), study.user_attrs.get("plan")
    if theirs is None:
        study.set_user_attr("plan", mine)
    elif theirs != mine:
        changed = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise ConfigError(f"study '{plan.name}' in {url} was made from a different sweep file ({', '.join(changed)} "
                          "differ); give this sweep another name, or put the file back as it was")
    return study


def counts(t: optuna.trial.FrozenTrial) -> bool:
    """A trial that uses up run_cap: running, queued or done, or failed in its own run. A trial whose
    worker died does not (its retry does), nor one skipped because another worker got there first."""
    if t.state in (TrialState.RUNNING, TrialState.WAITING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and "error" in t.user_attrs


# ---------------------------------------------------------------- one worker
class Worker:
    """Runs trials of one study until it is full; any number of these may share the study."""

    def __init__(self, plan: Plan, study: optuna.Study, sweep_dir: Path, url: str, trial_args: list[str], nproc: int):
        self.plan, self.study, self.sweep_dir, self.url = plan, study, sweep_dir, url
        self.trial_args, self.nproc = trial_args, nproc
        self.me = f"{socket.gethostname()}:{os.getpid()}"

    def room(self) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial: failed, and queued for retry
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return True
        if self.plan.target is not None and self.reached_target(trials):
            return False
        return sum(counts(t) for t in trials) < self.plan.cap

    def reached_target(self, trials) -> bool:
        done = [t.value for t in trials if t.state == TrialState.COMPLETE]
        best = (max if self.plan.goal == "maximize" else min)(done) if done else None
        if best is None:
            return False
        return best >= self.plan.target if self.plan.goal == "maximize" else best <= self.plan.target

    def after_trial(self, study: optuna.Study, _trial) -> None:
        if not self.room():
            study.stop()

    def claim(self, trial: optuna.Trial) -> None:
        """Refuse a trial that a worker starting at the same moment makes one too many, or that repeats
        a grid point another trial holds. Trial numbers are unique, so exactly one of two racing
        trials goes ahead."""
        earlier = [t for t in self.study.get_trials(deepcopy=False) if t.number < trial.number and counts(t)]
        reason = ""
        if len(earlier) >= self.plan.cap:
            reason = "run_cap reached"
        grid_id = trial.study._storage.get_trial_system_attrs(trial._trial_id).get("grid_id")
        if grid_id is not None and any(t.system_attrs.get("grid_id") == grid_id for t in earlier):
            reason = f"grid point {grid_id} is taken"
        if reason:
            trial.set_user_attr("skipped", reason)
            raise Skipped(reason)  # after_trial then finds the study full and stops this worker

    def objective(self, trial: optuna.Trial) -> float:
        self.claim(trial)
        params = {k: suggest(trial, k, d) for k, d in self.plan.space.items()}
        retry = "run" in trial.user_attrs  # a dead worker's trial: the same run folder, resumed from last.pt
        name = trial.user_attrs.get("run") or f"trial{trial.number:03d}"
        trial.set_user_attr("run", name)
        trial.set_user_attr("worker", self.me)
        if retry:
            release_dead_lock(self.sweep_dir / name)
        log.info("sweep %s: trial %d (%s) %s", self.plan.name, trial.number, name, params)
        rc, err = self.launch(trial, name, params)
        summary = RunFolder(self.sweep_dir / name).summary()
        if rc != 0 or not summary:
            trial.set_user_attr("error", err or f"exit code {rc}")
            raise TrialFailed(err)
        trial.set_user_attr("epochs", summary.get("epochs_done"))
        if summary.get("status") == "pruned":
            trial.set_user_attr("pruned_epoch", summary.get("pruned_epoch"))
            raise optuna.TrialPruned(f"{name} pruned after epoch {summary.get('pruned_epoch')}")
        value = summary.get(self.plan.metric)
        return float(value if value is not None else summary["best_metric"])

    def launch(self, trial: optuna.Trial, name: str, params: dict) -> tuple[int, str]:
        """The trial's own run; its output goes to <sweep>/<trial>.log (kept when it fails)."""
        # the run keeps its best epoch by the sweep's metric, so per-epoch and final reports agree
        chosen = [override(k, v) for k, v in {**self.plan.constants, **params}.items()]
        args = [*self.trial_args, f"train.monitor={self.plan.metric}", *chosen,
                f"run.dir={self.sweep_dir}", f"run.name={name}", "run.resume=auto", f"sweep.storage={self.url}",
                f"sweep.study={self.plan.name}", f"sweep.trial={trial._trial_id}"]
        out = self.sweep_dir / f"{name}.log"
        with open(out, "w") as f:
            rc = subprocess.run([*launch_command(self.nproc, ["train"]), *args], stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent).returncode
        if rc == 0:
            out.unlink(missing_ok=True)
            return 0, ""
        lines = [ln for ln in out.read_text().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        err = (errors or lines or ["(no output)"])[-1]
        log.warning("sweep %s: %s failed: %s (full output: %s)", self.plan.name, name, err, out)
        return rc, err


def suggest(trial: optuna.Trial, name: str, d: BaseDistribution):
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    value = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    return round(value, 10) if d.step else value  # 0.15, not 0.15000000000000002, in the trial's override


def release_dead_lock(run_dir: Path) -> None:
    """The study failed this trial because its worker stopped beating, so the run folder's lock (maybe
    from another machine, which rundir cannot check) belongs to a dead process."""
    if (run_dir / LOCK).is_file():
        log.warning("sweep: %s was left locked by a worker that died; taking it over", run_dir)
        (run_dir / LOCK).unlink(missing_ok=True)


# ---------------------------------------------------------------- entry points
def prepare(name_or_path: str, config_file: ConfigFiles, base_overrides: list[str]) -> tuple[Config, Plan, Path]:
    path = sweep_file(name_or_path)
    base = load_config(config_file, base_overrides)
    plan = plan_sweep(read_sweep(path), path, base.train.epochs)
    return base, plan, Path(base.run.dir) / "sweeps" / plan.name


def run(name_or_path: str, config_file: ConfigFiles, base_overrides: list[str], nproc: int = 1) -> pd.DataFrame:
    """Run trials until the study holds run_cap of them (all workers together); then the table."""
    base, plan, sweep_dir = prepare(name_or_path, config_file, base_overrides)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(base.sweep, sweep_dir)
    study = open_study(plan, base, url)
    trial_args = [*config_flags(config_file), *base_overrides,
                  f"log.wandb.group={base.log.wandb.group or plan.name}"]
    if base.sweep.executor == "ray":
        return run_on_ray(plan, base, sweep_dir, url, trial_args, nproc, config_file, base_overrides)
    worker = Worker(plan, study, sweep_dir, url, trial_args, nproc)
    if worker.room():
        log.info("sweep %s: %s, %d trials in all, study %s", plan.name, plan.method, plan.cap, url)
        study.optimize(worker.objective, callbacks=[worker.after_trial], catch=(TrialFailed, Skipped))
    else:
        log.info("sweep %s: the study already holds its %d trials; nothing to run", plan.name, plan.cap)
    return write_results(study, plan, sweep_dir, config_file, base_overrides)


def run_on_ray(plan: Plan, base: Config, sweep_dir: Path, url: str, trial_args: list[str], nproc: int,
               config_file: ConfigFiles, base_overrides: list[str]) -> pd.DataFrame:
    """sweep.executor=ray (ray_sweep.py); the same results.csv and best.yaml. Interrupted (Ctrl-C): the
    results so far, and exit 130; the same command resumes it."""
    from . import ray_sweep

    log.info("sweep %s: %s, %d trials in all on Ray, study %s", plan.name, plan.method, plan.cap, url)
    finished = ray_sweep.run(plan, base, sweep_dir, url, trial_args, nproc)
    table = write_results(optuna.load_study(study_name=plan.name, storage=storage(url)), plan, sweep_dir, config_file,
                          base_overrides)
    if not finished:
        print(table.to_string(index=False))
        log.warning("sweep %s: interrupted; the same command resumes it (finished trials are kept)", plan.name)
        raise SystemExit(130)
    return table


def results(study: optuna.Study, metric: str, goal: str, names: list[str]) -> pd.DataFrame:
    """One row per trial that ran (skipped ones left out), complete ones first, the best first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "skipped" in t.user_attrs:
            continue
        steps = t.intermediate_values  # the best value so far at each epoch (see trial.Reporter)
        value = t.value if t.state == TrialState.COMPLETE else steps[max(steps)] if steps else None
        rows.append({"trial": t.user_attrs.get("run", f"trial{t.number:03d}"), "number": t.number,
                     "status": STATUS[t.state], **t.params, metric: value,
                     "epochs": t.user_attrs.get("epochs", len(steps)), "pruned_epoch": t.user_attrs.get("pruned_epoch"),
                     "worker": t.user_attrs.get("worker", ""),
                     "error": t.user_attrs.get("error", "" if t.state != TrialState.FAIL else "worker died")})
    table = pd.DataFrame(rows, columns=["trial", "number", "status", *names, metric, "epochs", "pruned_epoch",
                                        "worker", "error"])
    table["pruned_epoch"] = table.pruned_epoch.astype("Int64")
    table["_done"] = table.status != "complete"
    table = table.sort_values(["_done", metric], ascending=[True, goal == "minimize"], na_position="last")
    return table.drop(columns="_done").reset_index(drop=True)


STATUS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


def write_results(study: optuna.Study, plan: Plan, sweep_dir: Path, config_file: ConfigFiles,
                  base_overrides: list[str]) -> pd.DataFrame:
    table = results(study, plan.metric, plan.goal, list(plan.space))
    files.write_csv(sweep_dir / "results.csv", table)
    if (table.status == "complete").any():
        best = study.best_trial
        params = [override(k, v) for k, v in {**plan.constants, **best.params}.items()]
        write_best_config(RunFolder(sweep_dir / best.user_attrs.get("run", "-")).config, sweep_dir / "best.yaml",
                          lambda: load_config(config_file, [*base_overrides, *params]))
    return table


def write_best_config(run_config: Path, out: Path, rebuild) -> None:
    """The best trial's resolved config, with its sweep-only and machine keys reset: ready for --config. A trial
    that ran on another machine has no folder here: its config is rebuilt from its parameters."""
    cfg = for_another_run(load_config(run_config) if run_config.is_file() else rebuild())
    cfg = replace(cfg, run=replace(cfg.run, name="", dir="runs", resume=""), sweep=SweepCfg())
    cfg.log.wandb.group = ""
    files.write_text(out, yaml.safe_dump(to_dict(cfg), sort_keys=False))
