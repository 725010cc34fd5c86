"""The submission ledger, `submissions/ledger.csv`: one row per written submission (which members,
their validation macro-F1, TTA, who, which commit), and the public leaderboard score once the team
reads it off the competition site (`baseline lb FILE SCORE`; on the built-in data, `baseline lb FILE`
scores it against `eval/truth.csv`). `baseline submissions` prints CV next to LB with their rank
correlation and draws `submissions/cv_vs_lb.png`: does our CV track the LB?"""

from __future__ import annotations

import csv
import fcntl
import getpass
import hashlib
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from .. import files, oof
from ..checkpoint import provenance
from ..config import ConfigError
from ..data.competition import field_of_classes
from ..runfolder import Experiment, RunFolder, read_json
from . import fields

log = logging.getLogger("baseline")

COLUMNS = ["file", "sha256", "time", "user", "git_commit", "members", "weights", "member_val_f1", "cv_f1", "tta",
           "lb", "pseudo", "labels"]  # labels: the members' OOF labelling (oof.labels_key): cv_f1 compares within one


class LedgerError(ConfigError):
    """A ledger request that cannot be met; the message says what is in the ledger."""


@contextmanager
def locked(ledger: Path):
    """An exclusive lock beside the ledger: two submits (or a submit and an `lb`) never interleave."""
    ledger.parent.mkdir(parents=True, exist_ok=True)
    with open(ledger.with_name(f".{ledger.name}.lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def member_f1(checkpoint: Path) -> float | None:
    return RunFolder.of_checkpoint(checkpoint).summary().get("val_f1")


def member_labels(checkpoint: Path) -> str:
    """The labelling the member was validated on: its experiment's cv.json `labels` (a run of its own: its
    oof.csv's key); "" where neither is there."""
    run = RunFolder.of_checkpoint(checkpoint)
    key = Experiment(run.path.parent).cv().get("labels")
    return key or (oof.labels_key(pd.read_csv(run.oof)) if run.oof.is_file() else "")


def member_pseudo(checkpoint: Path) -> str:
    """The pseudo-label table (data.pseudo) the member trained with, "" if none."""
    import yaml

    config = RunFolder.of_checkpoint(checkpoint).config
    data = (yaml.safe_load(config.read_text()) or {}).get("data", {}) if config.is_file() else {}
    return str(data.get("pseudo") or "")


def upgrade(ledger: Path) -> None:
    """A ledger written by an older kit (fewer columns) rewritten whole with today's columns, empty where it
    had none, so the next row lines up (its torn lines set aside first, as record_lb does)."""
    if not ledger.is_file() or ledger.stat().st_size == 0:
        return
    header, rows, torn = torn_rows(ledger)
    if header == COLUMNS:
        return
    if torn:
        with open(ledger.with_name(f"{ledger.name}.torn"), "a") as f:
            f.writelines(text + "\n" for _, text in torn)
    df = pd.DataFrame(rows, columns=header, dtype=str).reindex(columns=COLUMNS, fill_value="")
    files.write_csv(ledger, df)
    log.info("ledger %s: upgraded to the columns %s", ledger, ", ".join(c for c in COLUMNS if c not in header))


def member_name(checkpoint: Path) -> str:
    run = RunFolder.of_checkpoint(checkpoint).path
    return f"{run.parent.name}/{run.name}" if Experiment(run.parent).cv_file.is_file() else run.name


def ensemble_oof_f1(checkpoints: list[Path]) -> float | None:
    """Macro-F1 of the members' mean out-of-fold probabilities, when they predicted the same images
    (same split and fold); the experiment's OOF macro-F1 when they are the folds of one `baseline cv`
    experiment; None otherwise. One member: its own OOF macro-F1."""
    parents = {RunFolder.of_checkpoint(c).path.parent for c in checkpoints}
    # a refit alone is scored by its experiment's CV
    refit = len(checkpoints) == 1 and RunFolder.of_checkpoint(checkpoints[0]).name == Experiment.REFIT
    exp = Experiment(next(iter(parents)))
    if (len(checkpoints) > 1 or refit) and len(parents) == 1 and exp.cv_file.is_file():
        return exp.cv().get("oof_f1")
    frames = [RunFolder.of_checkpoint(c).oof for c in checkpoints]
    if not all(f.is_file() for f in frames):
        return None
    runs = [pd.read_csv(f).sort_values("path", kind="stable").reset_index(drop=True) for f in frames]
    if any(not o["path"].equals(runs[0]["path"]) for o in runs[1:]):
        return None
    classes = [member_classes(c) for c in checkpoints]
    if fields.mixes_fields(classes):  # one-field members: the fields mixed, scored on the 18 classes
        mixed = fields.oof_mix(runs, classes)
        return None if mixed is None else float(f1_score(*mixed, average="macro", zero_division=0))
    probs = np.mean([oof.probs(o) for o in runs], axis=0)
    return float(f1_score(runs[0]["label"], probs.argmax(1), average="macro", zero_division=0))


def member_classes(checkpoint: Path) -> list[str]:
    return read_json(RunFolder.of_checkpoint(checkpoint).classes) or []


def append(ledger: Path, submission: Path, checkpoints: list[Path], tta: bool, weights: list[float] | None = None,
           cv: float | None = None) -> dict:
    """One row for a submission just written; safe under concurrent submits. `cv`: the ensemble's
    OOF macro-F1 when `baseline ensemble` fitted it, else the members' mean OOF where they share rows."""
    f1s = [member_f1(c) for c in checkpoints]
    cv = cv if cv is not None else ensemble_oof_f1(checkpoints)
    row = {
        "file": str(submission), "sha256": hashlib.sha256(Path(submission).read_bytes()).hexdigest()[:16],
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "user": getpass.getuser(),
        "git_commit": provenance()["git_commit"][:12],
        "members": ";".join(member_name(c) + (f"[{f}]" if (f := field_of_classes(member_classes(c))) else "")
                            for c in checkpoints),
        "weights": ";".join(f"{w:.4f}" for w in weights) if weights else "equal",
        "member_val_f1": ";".join("" if f is None else f"{f:.4f}" for f in f1s),
        "cv_f1": "" if cv is None else f"{cv:.4f}", "tta": str(bool(tta)).lower(),
        "lb": "", "pseudo": ";".join(sorted({p for c in checkpoints if (p := member_pseudo(c))})),
        "labels": ";".join(sorted({k for c in checkpoints if (k := member_labels(c))})),
    }
    with locked(ledger):
        upgrade(ledger)
        new = not ledger.is_file() or ledger.stat().st_size == 0
        torn = not new and _ends_torn(ledger)
        with open(ledger, "a", newline="") as f:
            if torn:  # a killed submit or a full disk left half a row: ours starts on a line of its own
                f.write("\r\n")
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerow(row)
            f.flush()
            os.fsync(f.fileno())
    return row


def path(cfg) -> Path:
    """submit.ledger, else submissions/ledger.csv: one rule for `submit` (wherever submit.out puts the
    file), `lb` and `submissions`, so a row written by one is found by the others."""
    return Path(cfg.submit.ledger or "submissions/ledger.csv")


def _ends_torn(ledger: Path) -> bool:
    with open(ledger, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def read(ledger: Path) -> pd.DataFrame:
    """The ledger's whole rows. A torn row (half written: a killed submit, a full disk, a sync conflict)
    is left out with a warning naming its line; `torn_rows` has them."""
    return _read(ledger)[0]


def _read(ledger: Path) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """(whole rows, torn lines), one parse."""
    if not ledger.is_file():
        return pd.DataFrame(columns=COLUMNS), []
    header, rows, torn = torn_rows(ledger)
    if torn:
        log.warning("ledger %s: line(s) %s are torn (a killed submit or a full disk?) and left out", ledger,
                    ", ".join(str(n) for n, _ in torn))
    return pd.DataFrame(rows, columns=header or COLUMNS, dtype=str), torn


def torn_rows(ledger: Path) -> tuple[list[str], list[list[str]], list[tuple[int, str]]]:
    """(header, whole rows, [(line number, text)] of rows with the wrong number of fields)."""
    with open(ledger, newline="", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    parsed = list(csv.reader(lines))
    header = parsed[0] if parsed else []
    rows, torn = [], []
    for n, (row, text) in enumerate(zip(parsed[1:], lines[1:]), start=2):
        if len(row) == len(header):
            rows.append(row)
        elif text.strip():
            torn.append((n, text))
    return header, rows, torn


def _hits(df: pd.DataFrame, file: str, ledger: Path) -> pd.Series:
    """The ledger rows of a submission named by its path, file name or sha256."""
    same_name = df["file"].map(lambda p: Path(p).name) == Path(file).name
    hit = (df["file"] == file) | same_name | (df["sha256"] == file)
    if not hit.any():
        known = ", ".join(Path(p).name for p in df["file"].tail(5)) or "none yet"
        raise LedgerError(f"'{file}' is not in {ledger} (latest: {known}); only a file written by "
                          "`baseline submit` can get a leaderboard score")
    return hit


def submission_file(ledger: Path, file: str) -> Path:
    """Where the submission named `file` (path, file name or sha256) is on disk."""
    if Path(file).is_file():
        return Path(file)
    df = read(ledger)
    written = Path(df[_hits(df, file, ledger)]["file"].iloc[-1])
    if not written.is_file():
        raise LedgerError(f"{written}: the ledger's submission '{file}' is no longer there; give its path")
    return written


def truth_score(submission: Path, truth: Path) -> float:
    """Macro-F1 of a submission against a truth file with its columns and ids (the built-in data's
    eval/truth.csv plays the competition site)."""
    want = pd.read_csv(truth)
    key, answer = want.columns[0], want.columns[1]
    got = pd.read_csv(submission)
    if list(got.columns[:2]) != [key, answer]:
        raise LedgerError(f"{submission}: columns {list(got.columns)}, expected {key},{answer} as in {truth}")
    both = want.merge(got[[key, answer]], on=key, how="left", suffixes=("", "_sub"))
    missing = both[f"{answer}_sub"].isna()
    if missing.any() or len(got) != len(want):
        raise LedgerError(f"{submission}: {len(got)} rows for the {len(want)} ids of {truth} "
                          f"({int(missing.sum())} missing, e.g. {both.loc[missing, key].head(2).tolist()})")
    return float(f1_score(both[answer], both[f"{answer}_sub"].astype(want[answer].dtype), average="macro",
                          zero_division=0))


def record_lb(ledger: Path, file: str, score: float) -> pd.Series:
    """The public leaderboard score of a submission already in the ledger (by path, name or sha256)."""
    with locked(ledger):
        df, torn = _read(ledger)
        hit = _hits(df, file, ledger)
        df.loc[hit, "lb"] = f"{score:.5f}"
        if torn:  # the rewrite below keeps whole rows only: the torn ones are set aside, not lost
            with open(ledger.with_name(f"{ledger.name}.torn"), "a") as f:
                f.writelines(text + "\n" for _, text in torn)
            log.warning("ledger %s: %d torn line(s) moved to %s.torn", ledger, len(torn), ledger.name)
        files.write_csv(ledger, df)
        return df[hit].iloc[-1]


def cv_vs_lb(ledger: Path, out: Path) -> tuple[pd.DataFrame, float | None]:
    """The ledger with CV next to LB, their Spearman rank correlation (None with fewer than 3 scored
    submissions), and a scatter of the scored ones written to `out`."""
    df = read(ledger)
    # CV: the members' mean OOF macro-F1 where they share rows, else the first member's val macro-F1
    first = pd.to_numeric(df["member_val_f1"].str.split(";").str[0], errors="coerce")
    df = df.assign(cv=pd.to_numeric(df["cv_f1"], errors="coerce").fillna(first),
                   lb=pd.to_numeric(df["lb"], errors="coerce"))
    scored = df.dropna(subset=["cv", "lb"])
    rho = float(scored["cv"].corr(scored["lb"], method="spearman")) if len(scored) >= 3 else None
    if len(scored):
        _scatter(scored, rho, out)
    return df[["file", "time", "user", "members", "tta", "cv", "lb"]], rho


def point_labels(scored: pd.DataFrame) -> dict[tuple[float, float], str]:
    """One label per (CV, LB) point: submissions that land on the same point (an ensemble that kept
    a single member, a resubmitted file) share it instead of overprinting each other."""
    names = scored.assign(name=scored["file"].map(lambda p: Path(p).stem[:24])).groupby(["cv", "lb"])["name"]
    return {point: ", ".join(dict.fromkeys(same)) for point, same in names}


def _scatter(scored: pd.DataFrame, rho: float | None, out: Path) -> None:
    from ..plots import plt  # the headless backend

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(scored["cv"], scored["lb"], color="tab:blue")
    for (cv, lb), label in point_labels(scored).items():
        ax.annotate(label, (cv, lb), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lo = min(scored["cv"].min(), scored["lb"].min())
    hi = max(scored["cv"].max(), scored["lb"].max())
    ax.plot([lo, hi], [lo, hi], "--", color="grey", label="LB = CV")
    if len(scored) >= 2 and scored["cv"].nunique() > 1:
        k, b = np.polyfit(scored["cv"], scored["lb"], 1)
        ax.plot([lo, hi], [k * lo + b, k * hi + b], color="tab:orange", label=f"trend (slope {k:.2f})")
    title = "CV vs public LB" + (f", Spearman {rho:.2f}" if rho is not None else "")
    ax.set(xlabel="CV macro-F1 (OOF / val)", ylabel="public LB", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
