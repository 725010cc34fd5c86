"""`baseline submissions --final 2`: which two files to select on the site at the end. The best by CV, and
as insurance against a shake-up the best-CV file among those that answer most differently from it; where
CV and the public LB order two files differently, how large that LB gap is against what the public
part's size lets it mean."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import ledger

PUBLIC_SHARE = 0.5  # the share of the test set the public leaderboard scores (the mask contest: half)


@dataclass
class Pick:
    file: str
    cv: float
    lb: float | None
    differs: float  # the share of test images it answers differently from the first pick
    why: str


def answers(book: Path, files: list[str]) -> dict[str, np.ndarray]:
    """Each submission's answers (its last column), in its rows' order (every file follows the template)."""
    return {f: pd.read_csv(ledger.submission_file(book, f)).iloc[:, -1].to_numpy() for f in files}


def candidates(book: Path) -> pd.DataFrame:
    """The ledger's submissions with a CV score whose file is still on disk, newest row per file."""
    df = ledger.read(book)
    df = df[pd.to_numeric(df["cv_f1"], errors="coerce").notna()].drop_duplicates("file", keep="last")
    df = df[[Path(f).is_file() for f in df["file"]]]
    return df.assign(cv=pd.to_numeric(df["cv_f1"]), lb=pd.to_numeric(df["lb"], errors="coerce"))


def final(book: Path, k: int = 2) -> list[Pick]:
    """The best by CV, then for each further pick the best CV among the files that differ most from the
    first (the more different half of the rest): insurance that is still good."""
    df = candidates(book).sort_values("cv", ascending=False, kind="stable")
    if df.empty:
        raise ledger.LedgerError(f"{book}: no submission with a CV score whose file is still there")
    first = df.iloc[0]
    got = answers(book, df["file"].tolist())
    differs = {f: float((got[f] != got[first["file"]]).mean()) for f in df["file"]}
    picks = [Pick(first["file"], first["cv"], _or_none(first["lb"]), 0.0, "the best CV")]
    rest = df.iloc[1:].assign(differs=[differs[f] for f in df["file"].iloc[1:]])
    while len(picks) < k and len(rest):
        different = rest[rest["differs"] >= rest["differs"].median()]
        row = different.sort_values("cv", ascending=False, kind="stable").iloc[0]
        picks.append(Pick(row["file"], row["cv"], _or_none(row["lb"]), row["differs"],
                          f"CV {row['cv'] - first['cv']:+.4f} from the best, and it answers {row['differs']:.1%} of "
                          "the test images differently (the most different half of the rest): insurance against a "
                          "shake-up"))
        rest = rest[rest["file"] != row["file"]]
    return picks


def _or_none(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def disagreement(a: Pick, b: Pick, n_test: int, public_share: float = PUBLIC_SHARE) -> str:
    """A line where CV and the public LB order `a` and `b` differently: the LB gap against its noise, the
    standard error of a score difference between two files that differ on a share d of n public images,
    about sqrt(d / n)."""
    if a.lb is None or b.lb is None or (a.cv - b.cv) * (a.lb - b.lb) >= 0:
        return ""
    n = max(1, round(n_test * public_share))
    noise = math.sqrt(max(b.differs, 1 / n) / n)
    gap = abs(a.lb - b.lb)
    trust = ("trust CV: the LB gap is within two standard errors of the public part" if gap < 2 * noise else
             "the LB gap is larger than its noise: look for what CV misses (a leak, a shift between train and test)")
    return (f"CV and LB disagree: CV puts {a.file} ahead by {abs(a.cv - b.cv):.4f}, the public LB puts {b.file} "
            f"ahead by {gap:.4f}; on about {n} public images two files that differ on {b.differs:.1%} of them "
            f"move by about {noise:.4f} from chance alone; {trust}")


def report(book: Path, k: int = 2, public_share: float = PUBLIC_SHARE) -> str:
    picks = final(book, k)
    n_test = len(answers(book, [picks[0].file])[picks[0].file])
    lines = [f"select these {len(picks)} on the site:"]
    for i, p in enumerate(picks, 1):
        lb = f", LB {p.lb:.4f}" if p.lb is not None else ""
        lines.append(f"  {i}. {p.file} (CV {p.cv:.4f}{lb}): {p.why}")
    lines += [line for p in picks[1:] if (line := disagreement(picks[0], p, n_test, public_share))]
    return "\n".join(lines)
