"""`baseline sweep-report NAME`: a sweep's trials table, parameter importances and two pictures
(optimization history, parallel coordinates), all from the study through Optuna's own tools."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from ..config import Config, ConfigError  # noqa: E402
from .study import storage
from .sweep import results, storage_url  # noqa: E402

log = logging.getLogger("baseline")


def load(cfg: Config, name: str) -> tuple[optuna.Study, Path]:
    sweep_dir = Path(cfg.run.dir) / "sweeps" / name
    if not cfg.sweep.storage and not (sweep_dir / "study.db").is_file():
        raise ConfigError(f"no sweep '{name}': {sweep_dir / 'study.db'} does not exist (or set sweep.storage)")
    url = storage_url(cfg.sweep, sweep_dir)
    try:
        study = optuna.load_study(study_name=name, storage=storage(url))
    except KeyError:
        raise ConfigError(f"no study '{name}' in {url}") from None
    return study, sweep_dir


def importances(study: optuna.Study) -> pd.Series:
    """fANOVA importances over the finished trials (empty with fewer than two, or nothing varied)."""
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return pd.Series(dtype=float)
    try:
        fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return pd.Series(optuna.importance.get_param_importances(study, evaluator=fanova), dtype=float)
    except (RuntimeError, ValueError) as e:  # e.g. a parameter with a single value in every trial
        log.info("parameter importances: %s", e)
        return pd.Series(dtype=float)


def pictures(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, plot in (("optimization_history.png", optuna.visualization.matplotlib.plot_optimization_history),
                           ("parallel_coordinates.png", optuna.visualization.matplotlib.plot_parallel_coordinate)):
            ax = plot(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(10, 5)
            fig.tight_layout()
            fig.savefig(sweep_dir / name, dpi=100)
            plt.close(fig)
            out.append(sweep_dir / name)
    return out


def report(cfg: Config, name: str) -> str:
    study, sweep_dir = load(cfg, name)
    plan = study.user_attrs["plan"]  # what the workers stored: method, metric, goal, searched names
    table = results(study, plan["metric"], plan["goal"], list(plan["space"]))
    imp = importances(study)
    if len(imp):
        imp.rename("importance").to_csv(sweep_dir / "importances.csv", index_label="parameter")
    files = pictures(study, sweep_dir) if len(table) else []
    states = table.status.value_counts().to_dict() if len(table) else {}
    lines = [f"sweep {name}: {len(table)} trials {states}, {int(table.epochs.fillna(0).sum()) if len(table) else 0} "
             f"epochs in all ({plan.get('method')}, {plan.get('goal')} {plan.get('metric')})",
             table.to_string(index=False) if len(table) else "(no trials yet)"]
    if len(imp):
        lines += ["parameter importances (fANOVA):", imp.round(3).to_string()]
    lines += [f"wrote {p}" for p in files]
    return "\n".join(lines)


def dashboard(cfg: Config, name: str, port: int = 8080, out=print) -> None:
    """Serve the sweep's study (SQLite or PostgreSQL) with optuna-dashboard on localhost until Ctrl-C:
    trials as they finish, intermediate values per epoch, importances, parallel coordinates."""
    from optuna_dashboard import run_server

    study, sweep_dir = load(cfg, name)  # a missing sweep is one line, not an empty page
    url = storage_url(cfg.sweep, sweep_dir)
    db = storage(url)
    out(f"sweep '{name}' ({len(study.trials)} trials, {url}): http://127.0.0.1:{port}/dashboard/studies/"
        f"{db.get_study_id_from_name(name)}  (Ctrl-C stops it)", flush=True)
    run_server(db, host="127.0.0.1", port=port)
