"""A sweep trial's side of its run: rank 0 reports the metric to the study after every epoch and asks
the study's pruner; every rank receives the answer (a collective), so all ranks stop at one epoch."""

from __future__ import annotations

import logging

from .. import dist
from ..config import Config
from ..dist import die_with_parent

log = logging.getLogger("baseline")


class Reporter:
    """Outside a sweep (sweep.trial < 0) it reports nothing and never stops the run."""

    def __init__(self, cfg: Config, env: dist.Env, best: float | None = None):
        # best: a resumed run's best so far (its checkpoint's), so its next report is not from zero
        self.env, self.trial, self.metric, self.goal, self.best = env, None, "", "maximize", best
        self.active = cfg.sweep.trial >= 0
        if not self.active:
            return
        die_with_parent()  # torchrun's ranks too: their parent is the agent, which dies with the worker
        if env.is_main:
            self.trial, self.metric, self.goal = connect(cfg)

    def should_stop(self, epoch: int, row: dict, last: bool) -> bool:
        """Report this epoch's value; True on every rank when the pruner stops the trial (never after
        the last epoch: that trial is complete)."""
        if not self.active:
            return False
        stop = False
        if self.env.is_main:
            value = float(row[self.metric])
            if self.best is not None:  # the best so far, like the trial's final value: one bad epoch is not the trial
                value = max(value, self.best) if self.goal == "maximize" else min(value, self.best)
            self.best = value
            self.trial.report(value, epoch)
            stop = not last and self.trial.should_prune()
        return bool(dist.broadcast_object(self.env, stop))


def connect(cfg: Config):
    """The running trial in its study, with the study's own pruner and metric (from the sweep plan
    the workers stored on it)."""
    import optuna

    from .study import pruner, storage

    study = optuna.load_study(study_name=cfg.sweep.study, storage=storage(cfg.sweep.storage))
    plan = study.user_attrs["plan"]
    study.pruner = pruner(plan["hyperband"])
    return optuna.Trial(study, cfg.sweep.trial), plan["metric"], plan["goal"]
