"""Ray's OptunaSearch on the sweep's own study (a module of its own: Tune pickles the searcher with the
experiment, and Tuner.restore must find its class by name). Each trial's run folder is named after its
Optuna trial number, as with the Optuna executor, and what results.csv shows is recorded on the study."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from ray.tune.search.optuna import OptunaSearch

from ..runfolder import RunFolder
from .launch import finished_run, last_error


class StudySearch(OptunaSearch):
    def __init__(self, epochs: int, sweep_dir: str, **kwargs):
        super().__init__(**kwargs)
        self._epochs = epochs  # the base config's (a trial may set its own: its summary.json says how it ended)
        self._sweep_dir = sweep_dir

    def suggest(self, trial_id: str):
        with warnings.catch_warnings():  # the grid sampler stops the study when the grid is used up: as meant
            warnings.filterwarnings("ignore", message=".*Study.stop.*")
            config = super().suggest(trial_id)
        if config is None:
            return None
        ot = self._ot_trials[trial_id]
        name = ot.user_attrs.get("run") or f"trial{ot.number:03d}"
        ot.set_user_attr("run", name)
        ot.set_user_attr("worker", "ray")
        return {**config, "_run": name}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot = self._ot_trials.get(trial_id)
        if ot is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        if self._ot_study._storage.get_trial(ot._trial_id).state.is_finished():  # told already (a stop, then its
            self._completed_trials.add(trial_id)  # actor's end reported as a failure)
            return None
        run_dir = Path(self._sweep_dir) / ot.user_attrs.get("run", "")
        summary = RunFolder(run_dir).summary() if finished_run(run_dir) else {}
        if result and summary:  # what the run reached, also where a late stop cut Tune's reports short
            result = {**result, self._metric: summary["best_metric"], "epoch": summary["epochs_done"]}
        done = int((result or {}).get("epoch", 0))
        ot.set_user_attr("epochs", done)
        if error:
            ot.set_user_attr("error", last_error(Path(self._sweep_dir) / f"{ot.user_attrs.get('run')}.log"))
        elif result and not summary:
            # the run never wrote a finished summary: ASHA stopped it (pruned, as Optuna's hyperband marks it);
            # a run that ended early on its own (train.early_stop, fewer train.epochs) says "finished"
            ot.set_user_attr("pruned_epoch", done)
            told(lambda: self._ot_study.tell(ot, None, state=optuna.trial.TrialState.PRUNED))
            self._completed_trials.add(trial_id)
            return None
        return told(lambda: super(StudySearch, self).on_trial_complete(trial_id, result, error))


def told(tell):
    """A tell that the grid sampler cannot turn into an error: telling the grid's last point makes it call
    Study.stop(), which Optuna refuses outside study.optimize (the trial's state is stored before that)."""
    try:
        return tell()
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
        return None
