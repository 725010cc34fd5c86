"""A sweep's Optuna study: its database (SQLite file or PostgreSQL) and its pruner. The sweep runner
(sweep.py), each trial's own run (trial.py) and the report (report.py) all open it here."""

from __future__ import annotations

import time
import warnings

import optuna

from ..config import ConfigError, SweepCfg


def storage(url: str, sw: SweepCfg | None = None) -> optuna.storages.RDBStorage:
    """The study's database; with `sw`, a worker's: heartbeats, and a dead worker's trial retried."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(3):  # workers starting together may race to create the schema
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                beats = {} if sw is None else {
                    "heartbeat_interval": sw.heartbeat_s, "grace_period": sw.grace_s,
                    "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(sw.max_retry)}
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beats)
        except Exception as e:  # sqlalchemy's errors, a missing driver, a bad URL
            if attempt == 2:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"sweep.storage '{url}': cannot open the study database: {first}") from None
            time.sleep(1 + attempt)


def pruner(hyperband: dict | None) -> optuna.pruners.BasePruner:
    """HyperbandPruner with the plan's resources (epochs), or none."""
    return optuna.pruners.HyperbandPruner(**hyperband) if hyperband else optuna.pruners.NopPruner()
