"""What a run and an experiment leave on disk, by name (DESIGN.md's run folder): the one place that spells
the folders' file names. A run folder (`baseline train`, one fold of a cv, a refit) holds its config,
metrics, summary, OOF and checkpoints; an experiment folder (`baseline cv`) holds its folds, the joined OOF,
cv.json and the refit."""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = "checkpoints"
BEST, LAST, AVERAGED = "best.pt", "last.pt", "averaged.pt"  # in checkpoints/; top-k epochs are epoch<N>.pt


def read_json(path: Path) -> dict:
    """A summary.json or cv.json; {} when missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder:
        """The run a checkpoint file (<run>/checkpoints/<name>.pt) belongs to."""
        return cls(Path(checkpoint).parent.parent)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def summary_file(self) -> Path:
        return self.path / "summary.json"

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    @property
    def classes(self) -> Path:
        return self.path / "classes.json"

    @property
    def log(self) -> Path:
        return self.path / "train.log"

    @property
    def test_probs(self) -> Path:
        """The cache of each checkpoint's test-set probabilities (submit, pseudo)."""
        return self.path / "test_probs"

    @property
    def corrections(self) -> Path:
        return self.path / "corrections_applied.csv"

    @property
    def person_vote(self) -> Path:
        """What person voting does to this run's out-of-fold predictions (submit/people.py)."""
        return self.path / "person_vote.json"

    def summary(self) -> dict:
        """summary.json ({} before the run has finished)."""
        return read_json(self.summary_file)

    def is_run(self) -> bool:
        return self.checkpoints.is_dir()

    def experiment(self) -> Experiment | None:
        """The `baseline cv` experiment this run is a fold (or the refit) of, if any."""
        parent = Experiment(self.path.parent)
        return parent if parent.cv_file.is_file() else None


class Experiment:
    REFIT = "refit"  # the refit's run folder inside its experiment

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    def fold(self, k: int) -> RunFolder:
        return RunFolder(self.path / f"fold{k}")

    def seed(self, s: int) -> Experiment:
        """cv.seeds: the experiment of one seed, inside this one."""
        return Experiment(self.path / f"seed{s}")

    def seeds(self) -> list[Experiment]:
        """The experiments of each seed (cv.seeds), in seed order; [] for a one-seed experiment."""
        return [Experiment(self.path / f"seed{s}") for s in self.cv().get("seeds", [])]

    def fold_runs(self) -> list[RunFolder]:
        """Every fold's run folder, of every seed (cv.seeds)."""
        inner = self.seeds() or [self]
        return [RunFolder(p.parent.parent) for e in inner for p in sorted(e.path.glob(f"*/{CHECKPOINTS}/{BEST}"))
                if p.parent.parent.name != self.REFIT]

    @property
    def refit(self) -> RunFolder:
        return RunFolder(self.path / self.REFIT)

    def fold_checkpoints(self) -> list[Path]:
        """Every fold's best.pt (a refit's too; with cv.seeds, every seed's folds), in name order."""
        mine = sorted(self.path.glob(f"*/{CHECKPOINTS}/{BEST}"))
        return mine or sorted(self.path.glob(f"seed*/*/{CHECKPOINTS}/{BEST}"))

    @property
    def cv_file(self) -> Path:
        return self.path / "cv.json"

    @property
    def oof(self) -> Path:
        return self.path / "oof.csv"

    def cv(self) -> dict:
        """cv.json ({} before every fold has finished)."""
        return read_json(self.cv_file)
