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
import math
import os
import socket
import subprocess
import warnings
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from .. import files
from ..config import Config, ConfigError, SweepCfg, load_config, to_dict
from ..dist import die_with_parent, launch_command
from ..rundir import LOCK
from ..runfolder import RunFolder
from .launch import TrialFailed, override
from .study import pruner, storage

log = logging.getLogger("baseline")
optuna.logging.set_verbosity(optuna.logging.WARNING)

METHODS = ("grid", "random", "bayes")
MAPPED = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values", "log_uniform"}
# W&B distributions without an Optuna counterpart: refused by name before any trial runs.
REFUSED = {
    "q_log_uniform_values": "Optuna cannot quantise a log scale", "q_log_uniform": "Optuna cannot quantise a log scale",
    "inv_log_uniform_values": "Optuna has no inverse-log distribution",
    "inv_log_uniform": "Optuna has no inverse-log distribution",
    "normal": "Optuna samples bounded ranges only", "q_normal": "Optuna samples bounded ranges only",
    "log_normal": "Optuna samples bounded ranges only", "q_log_normal": "Optuna samples bounded ranges only",
    "beta": "Optuna has no beta distribution", "q_beta": "Optuna has no beta distribution",
}
PARAM_KEYS = {"values", "value", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "a", "b"}
TOP_KEYS = {"program", "method", "metric", "parameters", "run_cap", "command", "name", "description",
            "early_terminate", "project", "entity"}
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
METRICS = ("val_f1", "val_acc", "val_loss")  # what every epoch records and summary.json keeps
DEFAULT_CAP = 10  # random / bayes without run_cap (W&B would run until stopped)


class Skipped(Exception):
    """Another worker got there first (run_cap reached, or the same grid point)."""


# ---------------------------------------------------------------- the sweep file
def sweep_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = resources.files("baseline") / "configs" / "sweeps" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"sweep '{name_or_path}' is neither a file nor a packaged sweep (grid, random, bayes)")


def read_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file '{path}' must be a mapping")
    return spec


@dataclass(frozen=True)
class Plan:
    """A W&B sweep file in Optuna's terms; also stored on the study so that every worker (and every
    trial's own run) reads the same one."""

    name: str
    method: str
    metric: str
    goal: str
    space: dict[str, BaseDistribution]  # searched parameters
    constants: dict  # `value:` parameters, passed to every trial
    cap: int  # trials to run in all, over every worker
    hyperband: dict | None  # HyperbandPruner's arguments
    target: float | None  # stop the sweep once a trial reaches it

    def sampler(self, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
        if self.method == "grid":
            return optuna.samplers.GridSampler({k: list(d.choices) for k, d in self.space.items()}, seed=seed)
        if self.method == "random":
            return TrialSeededRandom(seed)
        return TrialSeededTPE(seed, startup_trials)

    def record(self) -> dict:
        return {"method": self.method, "metric": self.metric, "goal": self.goal, "cap": self.cap,
                "hyperband": self.hyperband, "target": self.target, "constants": self.constants,
                "space": {k: optuna.distributions.distribution_to_json(d) for k, d in self.space.items()}}


class TrialSeededRandom(optuna.samplers.RandomSampler):
    """Trial n's draws depend on (seed, n) only: one worker's sweep is reproducible, and workers that
    share a study never draw each other's parameters."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        self._rng.rng.seed([self._base_seed, trial.number])


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose startup trials are exactly random's (same seed, same trial numbers)."""

    def __init__(self, seed: int, startup_trials: int):
        super().__init__(seed=seed, n_startup_trials=startup_trials)
        self._random_sampler = TrialSeededRandom(seed)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        self._rng.rng.seed([self._base_seed, trial.number, 1])
        super().before_trial(study, trial)


def plan_sweep(spec: dict, path: Path, epochs: int) -> Plan:
    """Validate a W&B sweep file and map it onto Optuna; refuse what cannot be mapped, naming the key."""
    where = f"sweep file '{path}'"
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    method = spec.get("method")
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {list(METHODS)}, got {method!r}")
    metric = spec.get("metric") or {}
    if metric.get("goal") not in ("maximize", "minimize") or not metric.get("name"):
        raise ConfigError(f"{where}: metric needs name and goal (maximize | minimize)")
    if metric["name"] not in METRICS:
        raise ConfigError(f"{where}: metric.name '{metric['name']}' is not one the runs record ({', '.join(METRICS)})")
    if set(metric) - {"name", "goal", "target"}:
        raise ConfigError(f"{where}: metric has unknown key(s) {sorted(set(metric) - {'name', 'goal', 'target'})}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping of config keys")
    space, constants = {}, {}
    for key, p in params.items():
        kind = parameter(key, p, method, where)
        check_values(key, kind, where)
        if isinstance(kind, BaseDistribution):
            space[key] = kind
        else:
            constants[key] = kind[1]
    if not space:
        raise ConfigError(f"{where}: every parameter is a constant; nothing to search")
    if "train.monitor" in space or constants.get("train.monitor", metric["name"]) != metric["name"]:
        raise ConfigError(f"{where}: train.monitor is set by metric.name ({metric['name']}): a trial's best epoch, "
                          "checkpoint and reported value are all by that metric; drop train.monitor from parameters")
    return Plan(name=str(spec.get("name") or Path(path).stem), method=method, metric=metric["name"],
                goal=metric["goal"], space=space, constants=constants, cap=trial_cap(spec, space, where),
                hyperband=hyperband(spec.get("early_terminate"), epochs, where), target=metric.get("target"))


def parameter(key: str, p, method: str, where: str):
    """An Optuna distribution, or ("constant", value)."""
    if not isinstance(p, dict) or not set(p) <= PARAM_KEYS:
        raise ConfigError(f"{where}: parameter '{key}' must be a mapping with keys from {sorted(PARAM_KEYS)}")
    dist = p.get("distribution") or inferred_distribution(p)
    if dist is None:
        raise ConfigError(f"{where}: parameter '{key}' needs values, value or a distribution")
    if dist in REFUSED:
        raise ConfigError(f"{where}: parameter '{key}': distribution '{dist}' cannot run locally ({REFUSED[dist]}); "
                          "use another distribution, or W&B's server (make sweep-agent)")
    if dist not in MAPPED:
        raise ConfigError(f"{where}: parameter '{key}' has unknown distribution '{dist}'")
    if "probabilities" in p:
        raise ConfigError(f"{where}: parameter '{key}': probabilities (a weighted categorical) cannot run locally")
    if dist == "constant" or "value" in p:
        if "value" not in p:
            raise ConfigError(f"{where}: parameter '{key}' (constant) needs value")
        return ("constant", p["value"])
    if "values" in p:
        if not isinstance(p["values"], list) or not p["values"]:
            raise ConfigError(f"{where}: parameter '{key}': values must be a non-empty list")
        return CategoricalDistribution([choice(v) for v in p["values"]])
    d = numeric_distribution(key, p, dist, where)
    if method != "grid":
        return d
    if dist in ("int_uniform", "q_uniform"):  # a grid can enumerate these
        n = int(round((d.high - d.low) / d.step)) + 1
        return CategoricalDistribution([d.low + i * d.step if dist == "int_uniform" else round(d.low + i * d.step, 10)
                                        for i in range(n)])
    raise ConfigError(f"{where}: grid parameter '{key}' needs values (a grid cannot enumerate '{dist}')")


def inferred_distribution(p: dict) -> str | None:
    """W&B's rule when `distribution` is left out."""
    if "value" in p:
        return "constant"
    if "values" in p:
        return "categorical"
    if "min" in p and "max" in p:
        ints = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


def numeric_distribution(key: str, p: dict, dist: str, where: str) -> BaseDistribution:
    if "min" not in p or "max" not in p:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}) needs min and max")
    lo, hi = p["min"], p["max"]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)) or not lo < hi:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}): expected numbers min < max, got {lo!r}, {hi!r}")
    if dist == "int_uniform":
        return IntDistribution(int(lo), int(hi))
    if dist == "uniform":
        return FloatDistribution(float(lo), float(hi))
    if dist == "q_uniform":
        return FloatDistribution(float(lo), float(hi), step=float(p.get("q", 1.0)))
    if dist == "log_uniform":  # W&B: min and max are natural-log exponents
        return FloatDistribution(math.exp(lo), math.exp(hi), log=True)
    if lo <= 0:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}) needs min > 0, got {lo!r}")
    return FloatDistribution(float(lo), float(hi), log=True)


def choice(v):
    """Optuna's categorical holds scalars; a list or mapping value travels as its flow-YAML text,
    which is also how the trial's `key=value` override writes it."""
    return yaml.safe_dump(v, default_flow_style=True).strip() if isinstance(v, (list, dict)) else v


def check_values(key: str, kind, where: str) -> None:
    """Every value a parameter can take is a valid config value (the ends of a range)."""
    if isinstance(kind, CategoricalDistribution):
        samples = kind.choices
    elif isinstance(kind, BaseDistribution):
        samples = (kind.low, kind.high)
    else:
        samples = (kind[1],)
    for sample in samples:
        try:
            load_config(None, [override(key, sample)])
        except ConfigError as e:
            raise ConfigError(f"{where}: parameter '{key}': {e}") from None


def trial_cap(spec: dict, space: dict, where: str) -> int:
    cap = spec.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{where}: run_cap must be a positive integer, got {cap!r}")
    if spec["method"] == "grid":
        size = math.prod(len(d.choices) for d in space.values())
        return min(size, cap) if cap else size
    return cap or DEFAULT_CAP


def hyperband(et, epochs: int, where: str) -> dict | None:
    """W&B's early_terminate -> HyperbandPruner(min_resource, max_resource, reduction_factor) in epochs."""
    if not et:
        return None
    if not isinstance(et, dict) or set(et) - HYPERBAND_KEYS:
        raise ConfigError(f"{where}: early_terminate has unknown key(s) "
                          f"{sorted(set(et) - HYPERBAND_KEYS) if isinstance(et, dict) else et}")
    if et.get("type") != "hyperband":
        raise ConfigError(f"{where}: early_terminate.type must be hyperband, got {et.get('type')!r}")
    if et.get("strict"):
        raise ConfigError(f"{where}: early_terminate.strict: true has no Optuna counterpart (remove it)")
    eta = et.get("eta", 3)
    if not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"{where}: early_terminate.eta must be an integer >= 2, got {eta!r}")
    if "min_iter" in et and "s" not in et:
        lo, hi = et["min_iter"], et.get("max_iter", epochs)
    elif "max_iter" in et and "s" in et and "min_iter" not in et:
        hi = et["max_iter"]
        lo = max(1, round(hi / eta ** et["s"])) if isinstance(hi, int) and isinstance(et["s"], int) else None
    else:
        raise ConfigError(f"{where}: early_terminate needs min_iter (optionally max_iter), or max_iter with s")
    if not all(isinstance(x, int) for x in (lo, hi)) or not 1 <= lo <= hi:
        raise ConfigError(f"{where}: early_terminate: expected integer epochs 1 <= min_iter <= max_iter, "
                          f"got {lo!r}, {hi!r}")
    return {"min_resource": lo, "max_resource": hi, "reduction_factor": eta}


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
def prepare(name_or_path: str, config_file: str | None, base_overrides: list[str]) -> tuple[Config, Plan, Path]:
    path = sweep_file(name_or_path)
    base = load_config(config_file, base_overrides)
    plan = plan_sweep(read_sweep(path), path, base.train.epochs)
    return base, plan, Path(base.run.dir) / "sweeps" / plan.name


def run(name_or_path: str, config_file: str | None, base_overrides: list[str], nproc: int = 1) -> pd.DataFrame:
    """Run trials until the study holds run_cap of them (all workers together); then the table."""
    base, plan, sweep_dir = prepare(name_or_path, config_file, base_overrides)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(base.sweep, sweep_dir)
    study = open_study(plan, base, url)
    trial_args = [*(["--config", config_file] if config_file else []), *base_overrides,
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
               config_file: str | None, base_overrides: list[str]) -> pd.DataFrame:
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


def write_results(study: optuna.Study, plan: Plan, sweep_dir: Path, config_file: str | None,
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
    """The best trial's resolved config, with its sweep-only keys reset: ready for --config. A trial
    that ran on another machine has no folder here: its config is rebuilt from its parameters."""
    cfg = load_config(run_config) if run_config.is_file() else rebuild()
    cfg = replace(cfg, run=replace(cfg.run, name="", dir="runs", resume=""), sweep=SweepCfg())
    cfg.log.wandb.group = ""
    files.write_text(out, yaml.safe_dump(to_dict(cfg), sort_keys=False))
