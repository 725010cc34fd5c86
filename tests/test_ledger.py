"""The submission ledger: concurrent appends, lb scores, CV vs LB."""

from __future__ import annotations

import json
import multiprocessing as mp

import pandas as pd
import pytest

from baseline.cli import main
from baseline.submit import ledger


def fake_member(folder, val_f1, paths=("a.png", "b.png", "c.png"), labels=(0, 1, 1), probs=((0.9, 0.1),) * 3,
                oof=True):
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "best.pt").write_bytes(b"x")
    (folder / "summary.json").write_text(json.dumps({"val_f1": val_f1}))
    if not oof:
        return folder / "checkpoints" / "best.pt"
    df = pd.DataFrame({"path": list(paths), "label": list(labels), "pred": [int(p[1] > p[0]) for p in probs]})
    df[["p0", "p1"]] = list(probs)
    df.to_csv(folder / "oof.csv", index=False)
    return folder / "checkpoints" / "best.pt"


def _append_many(book, sub, ckpt, n):
    for _ in range(n):
        ledger.append(book, sub, [ckpt], tta=False)


@pytest.mark.slow  # two processes, 25 appends each: 15 s
def test_two_concurrent_submits_both_land(tmp_path):
    ckpt = fake_member(tmp_path / "run", 0.8)
    sub = tmp_path / "s.csv"
    sub.write_text("ImageID,ans\na,1\n")
    book = tmp_path / "ledger.csv"
    procs = [mp.get_context("spawn").Process(target=_append_many, args=(book, sub, ckpt, 25)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    df = ledger.read(book)
    assert len(df) == 50 and list(df.columns) == ledger.COLUMNS
    assert (df["members"] == "run").all() and (df["member_val_f1"] == "0.8000").all()


def test_ensemble_cv_is_the_mean_oof_when_members_share_rows(tmp_path):
    a = fake_member(tmp_path / "a", 0.5, probs=((0.9, 0.1), (0.6, 0.4), (0.2, 0.8)))  # one mistake
    b = fake_member(tmp_path / "b", 0.5, probs=((0.9, 0.1), (0.1, 0.9), (0.6, 0.4)))  # another
    assert ledger.ensemble_oof_f1([a, b]) == pytest.approx(1.0)  # the mean gets all three right
    c = fake_member(tmp_path / "c", 0.5, paths=("x.png", "y.png", "z.png"))
    assert ledger.ensemble_oof_f1([a, c]) is None  # other images: no common CV


def test_lb_refuses_a_file_not_in_the_ledger_and_scores_a_known_one(tmp_path, capsys):
    book = tmp_path / "ledger.csv"
    assert main(["lb", "nope.csv", "0.8", f"submit.ledger={book}"]) == 2
    assert "not in" in capsys.readouterr().err
    ckpt = fake_member(tmp_path / "r", 0.7)
    sub = tmp_path / "r.csv"
    sub.write_text("ImageID,ans\na,1\n")
    ledger.append(book, sub, [ckpt], tta=True)
    assert main(["lb", "r.csv", "0.75", f"submit.ledger={book}"]) == 0
    assert ledger.read(book)["lb"].tolist() == ["0.75000"]


def test_lb_without_a_score_is_the_macro_f1_against_the_truth_file(tmp_path, capsys):
    book = tmp_path / "ledger.csv"
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "truth.csv").write_text("ImageID,ans\na,0\nb,0\nc,1\nd,2\n")
    sub = tmp_path / "s.csv"
    sub.write_text("ImageID,ans\nd,2\nc,1\nb,1\na,0\n")  # b wrong; another order than the truth's
    ledger.append(book, sub, [fake_member(tmp_path / "r", 0.7)], tta=False)
    # class 0: P 1 R 1/2; class 1: P 1/2 R 1; class 2: 1 -> (2/3 + 2/3 + 1) / 3
    assert main(["lb", "s.csv", f"data.root={tmp_path}", f"submit.ledger={book}"]) == 0
    assert ledger.read(book)["lb"].tolist() == [f"{7 / 9:.5f}"]
    sub.write_text("ImageID,ans\na,0\nb,0\nc,1\n")
    assert main(["lb", str(sub), f"data.root={tmp_path}", f"submit.ledger={book}"]) == 2
    err = capsys.readouterr().err
    assert "3 rows for the 4 ids" in err and "['d']" in err
    # real competition data has no truth file: without a score, `lb` asks for the one the site shows
    assert main(["lb", "s.csv", f"data.root={tmp_path / 'real'}", f"submit.ledger={book}"]) == 2
    err = capsys.readouterr().err
    assert "no SCORE given" in err and "baseline lb s.csv 0.7713" in err
    assert main(["lb", "s.csv", "zero.77", f"submit.ledger={book}"]) == 2
    assert "is not a number" in capsys.readouterr().err


def test_submissions_prints_cv_next_to_lb_and_draws_them(tmp_path, capsys):
    book = tmp_path / "ledger.csv"
    for i, (cv, lb) in enumerate([(0.70, 0.66), (0.80, 0.71), (0.75, 0.69), (0.90, 0.80)]):
        ckpt = fake_member(tmp_path / f"m{i}", cv, oof=False)  # CV: the member's val macro-F1
        sub = tmp_path / f"s{i}.csv"
        sub.write_text(f"ImageID,ans\na,{i}\n")
        ledger.append(book, sub, [ckpt], tta=False)
        assert main(["lb", str(sub), str(lb), f"submit.ledger={book}"]) == 0
    capsys.readouterr()
    assert main(["submissions", f"submit.ledger={book}"]) == 0
    out = capsys.readouterr().out
    assert "Spearman 1.00 over 4 scored submissions" in out
    assert (tmp_path / "cv_vs_lb.png").stat().st_size > 5000


def test_submissions_on_the_same_point_share_one_label():
    scored = pd.DataFrame({"file": ["s/ens.csv", "s/r18fact.csv", "s/r18.csv", "t/r18.csv"],
                           "cv": [0.968, 0.968, 0.938, 0.938], "lb": [0.961, 0.961, 0.912, 0.912]})
    assert ledger.point_labels(scored) == {(0.938, 0.912): "r18", (0.968, 0.961): "ens, r18fact"}


def test_a_torn_last_line_is_set_aside_not_glued_to(tmp_path, caplog):
    """A killed submit or a full disk leaves half a row: the next submit starts a line of its own, the
    readers leave the torn row out with a warning, and an lb score moves it aside instead of losing it."""
    ckpt = fake_member(tmp_path / "run", 0.8)
    sub = tmp_path / "s.csv"
    sub.write_text("ImageID,ans\na,1\n")
    book = tmp_path / "ledger.csv"
    ledger.append(book, sub, [ckpt], tta=False)
    with open(book, "a") as f:
        f.write(str(sub) + ",0123abcd,2026-12-01 10:00")  # torn: no newline, fields missing
    ledger.append(book, sub, [ckpt], tta=True)
    df = ledger.read(book)
    assert df.tta.tolist() == ["false", "true"] and "line(s) 3 are torn" in caplog.text
    ledger.record_lb(book, str(sub), 0.5)
    assert ledger.read(book).lb.tolist() == ["0.50000", "0.50000"]
    assert "0123abcd" in (tmp_path / "ledger.csv.torn").read_text()
    assert main(["submissions", f"submit.ledger={book}"]) == 0
