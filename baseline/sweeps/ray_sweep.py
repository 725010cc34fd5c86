"""`sweep.executor=ray`: the same W&B-format sweep, its trials placed and run by Ray Tune (`baseline[ray]`).

The search is the kit's own W&B -> Optuna translation, handed to Ray's OptunaSearch with the plan's
sampler (grid: Optuna's grid sampler, the grid's size as the sample count; random; bayes: TPE) and the
sweep's study in sweep.storage, so `results.csv`, `best.yaml` and `sweep-report` read the same study as
with the Optuna executor. `early_terminate: hyperband` is Tune's ASHAScheduler (min_iter -> grace
period, eta -> reduction factor). Each trial is a `baseline train` subprocess in its own process group
(under torchrun with sweep.gpus_per_trial > 1): its trainable follows the run's metrics.csv and reports
each epoch to Tune; a trial Tune stops has its whole group ended, and one whose Ray worker dies takes
its run with it (the kernel's parent-death signal). `make sweep` again resumes the experiment
(Tuner.restore): finished trials are kept, unfinished ones continue from their last.pt.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from ..config import Config, ConfigError
from ..dist import die_with_parent, launch_command
from ..runfolder import RunFolder
from .launch import TrialFailed, finished_run, last_error, override
from .study import storage

log = logging.getLogger("baseline")

EXPERIMENT = "ray"  # Tune's experiment folder under the sweep's folder
POLL_S = 0.5


def available() -> None:
    try:
        import ray  # noqa: F401
        from ray import tune  # noqa: F401
    except ImportError:
        raise ConfigError("sweep.executor=ray needs Ray Tune: pip install 'baseline[ray]' (make venv installs it)") \
            from None


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of this sweep runs, apart from its parameters."""

    args: list[str]  # the base config's arguments (config file, overrides, W&B group)
    constants: dict
    metric: str
    goal: str
    sweep_dir: str
    nproc: int
    epochs: int
    cwd: str  # where the sweep was started: relative paths (data.root, --config) mean the same in every trial


def trial_overrides(spec: TrialSpec, params: dict, name: str) -> list[str]:

    chosen = [override(k, v) for k, v in {**spec.constants, **params}.items()]
    return [*spec.args, f"train.monitor={spec.metric}", *chosen, f"run.dir={spec.sweep_dir}", f"run.name={name}",
            "run.resume=auto"]


def run_trial(config: dict, spec: TrialSpec) -> None:
    """Tune's trainable: the trial's own run as a subprocess, each new epoch of its metrics.csv reported
    (the best value so far, as the Optuna executor reports it). Runs in a Ray worker."""

    name = config["_run"]
    params = {k: v for k, v in config.items() if not k.startswith("_")}
    run_dir = Path(spec.sweep_dir) / name
    out = Path(spec.sweep_dir) / f"{name}.log"
    if finished_run(run_dir):  # done before an interruption Tune noticed: report it, train nothing
        report_rows(spec, epochs_of(run_dir), None)
        return
    drop_stale_rows(run_dir)
    with open(out, "a") as f:
        proc = subprocess.Popen([*launch_command(spec.nproc, ["train"]), *trial_overrides(spec, params, name)],
                                stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                cwd=spec.cwd, start_new_session=True, preexec_fn=die_with_parent)
    (Path(spec.sweep_dir) / f"{name}.pgid").write_text(str(proc.pid))  # its process group, for whoever checks
    try:
        reported, best = 0, None  # a resumed trial reports its earlier epochs again: Tune counts them afresh
        while True:
            rc = proc.poll()
            rows = epochs_of(run_dir)
            best = report_rows(spec, rows[reported:], best)
            reported = max(reported, len(rows))
            if rc is not None:
                break
            time.sleep(POLL_S)
        if rc != 0:
            raise TrialFailed(f"{name} exited with code {rc}: {last_error(out)} (full output: {out})")
    finally:
        end_group(proc)


def report_rows(spec: TrialSpec, rows: list[dict], best: float | None) -> float | None:
    """Each epoch's row to Tune: the best value so far (as the Optuna executor reports it) and the epoch."""
    from ray import tune

    for row in rows:
        value = float(row[spec.metric])
        best = value if best is None else max(best, value) if spec.goal == "maximize" else min(best, value)
        tune.report({spec.metric: best, "epoch": int(row["epoch"]), f"epoch_{spec.metric}": value})
    return best


def drop_stale_rows(run_dir: Path) -> None:
    """metrics.csv cut to the epochs its last.pt holds, before a resumed trial reports anything: the resumed
    run cuts them too, but only once it starts, and rows it then writes again would never be reported."""
    from .. import checkpoint as ckpt
    from ..tracking import truncate_metrics

    run = RunFolder(run_dir)
    truncate_metrics(run.metrics, ckpt.read(run.last, mmap=True).epoch if run.last.is_file() else 0)


def epochs_of(run_dir: Path) -> list[dict]:
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return []
    try:
        return pd.read_csv(path).to_dict("records")
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return []  # being written: read it again next time


def end_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """The trial's process group ended: SIGTERM (the run saves last.pt), then SIGKILL after `grace_s`."""
    if proc.poll() is not None and not group_alive(proc.pid):
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline and group_alive(proc.pid):
            proc.poll()
            time.sleep(0.1)
        if not group_alive(proc.pid):
            proc.poll()
            return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(_pgid_of(pid) == pgid and not _zombie(pid) for pid in _pids())


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def make_searcher(plan, cfg: Config, url: str, epochs: int, sweep_dir: Path):
    from .ray_search import StudySearch

    return StudySearch(epochs, str(sweep_dir), space=dict(plan.space), metric=plan.metric,
                       mode="max" if plan.goal == "maximize" else "min",
                       sampler=plan.sampler(cfg.seed, cfg.sweep.startup_trials), study_name=plan.name,
                       storage=storage(url))


def scheduler(plan):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    hb = plan.hyperband
    if hb is None:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", metric=plan.metric, mode="max" if plan.goal == "maximize" else "min",
                         max_t=hb["max_resource"], grace_period=hb["min_resource"],
                         reduction_factor=hb["reduction_factor"])


def connect(cfg: Config) -> None:
    """Join the cluster at sweep.ray_address (or RAY_ADDRESS), else start one on this machine. Usage
    statistics off, no dashboard."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.sweep.ray_address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        return
    t0 = time.perf_counter()
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             configure_logging=False)
    free = ", ".join(f"{k} {v:g}" for k, v in sorted(ray.cluster_resources().items()) if k in ("CPU", "GPU"))
    log.info("ray: %s (%s; ready in %.1fs)", f"the cluster at {address}" if address else "started on this machine",
             free, time.perf_counter() - t0)


def run(plan, base: Config, sweep_dir: Path, url: str, trial_args: list[str], nproc: int) -> bool:
    """Run (or resume) the sweep on Ray; True once every trial has finished, False if interrupted."""
    available()
    import ray
    from ray import tune

    connect(base)
    gpus = base.sweep.gpus_per_trial
    spec = TrialSpec(trial_args, dict(plan.constants), plan.metric, plan.goal, str(sweep_dir.resolve()),
                     max(1, int(gpus)) if gpus >= 1 else nproc, base.train.epochs, os.getcwd())
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec),
                                    {"cpu": base.sweep.cpus_per_trial, "gpu": gpus})
    path = sweep_dir.resolve() / EXPERIMENT
    try:
        if tune.Tuner.can_restore(str(path)):
            log.info("sweep %s: resuming the Ray experiment in %s", plan.name, path)
            tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=make_searcher(plan, base, url, base.train.epochs,
                                                                         sweep_dir),
                                            scheduler=scheduler(plan), num_samples=plan.cap),
                run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(sweep_dir.resolve()), verbose=0,
                                          failure_config=tune.FailureConfig(max_failures=0)))
        tuner.fit()
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name=plan.name, storage=storage(url))
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) >= plan.cap
