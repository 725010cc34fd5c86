"""`baseline submissions --final 2` on a hand-made ledger: the best by CV, then the best-CV file among the
ones that answer most differently; a CV-vs-LB disagreement is weighed against the public part's size."""

import numpy as np
import pandas as pd

from baseline.cli import main
from baseline.submit import ledger, picks


def hand_made(tmp_path, lb_c=0.76):
    """A (CV 0.80), B (0.795, 2% of answers differ from A), C (0.79, 30%), D (0.70, 50%); 100 test images."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 18, 100)
    rows = []
    for name, cv, share, lb in [("a", 0.80, 0.0, 0.75), ("b", 0.795, 0.02, None), ("c", 0.79, 0.30, lb_c),
                                ("d", 0.70, 0.50, None)]:
        ans = base.copy()
        ans[: int(share * 100)] = (ans[: int(share * 100)] + 1) % 18
        f = tmp_path / "submissions" / f"{name}.csv"
        f.parent.mkdir(exist_ok=True)
        pd.DataFrame({"ImageID": [f"{i}.jpg" for i in range(100)], "ans": ans}).to_csv(f, index=False)
        rows.append({**{c: "" for c in ledger.COLUMNS}, "file": str(f), "cv_f1": cv, "lb": "" if lb is None else lb})
    book = tmp_path / "submissions" / "ledger.csv"
    pd.DataFrame(rows, columns=ledger.COLUMNS).to_csv(book, index=False)
    return book


def test_final_two_are_the_best_cv_and_the_best_of_the_most_different(tmp_path):
    book = hand_made(tmp_path)
    first, second = picks.final(book, 2)
    folder = tmp_path / "submissions"
    assert (first.file, second.file) == (str(folder / "a.csv"), str(folder / "c.csv"))
    assert second.differs == 0.30 and "30.0%" in second.why
    text = picks.report(book, 2)
    assert "CV and LB disagree" in text and "trust CV" in text  # LB 0.76 > 0.75 on 50 public images: noise


def test_a_large_lb_gap_is_not_waved_away(tmp_path):
    text = picks.report(hand_made(tmp_path, lb_c=0.95), 2)
    assert "larger than its noise" in text and "trust CV" not in text


def test_the_command_prints_the_picks(tmp_path, capsys):
    book = hand_made(tmp_path)
    assert main(["submissions", "--final", "2", f"submit.ledger={book}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("select these 2 on the site:") and "1. " in out and "c.csv" in out
