"""Pseudo-labels: confident test predictions as an extra training table, in every fold's training part and
never in validation; the ledger says which submissions used them."""

import csv

import pandas as pd
import pytest

from baseline.cli import main
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_pseudo_labels_train_every_fold_never_validate_and_reach_the_ledger(synth_root, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "m"})
    assert main(["train", *over]) == 0
    assert main(["pseudo", *over, f"submit.checkpoints=[{runs / 'm'}]", "pseudo.threshold=0"]) == 0
    table = pd.read_csv(tmp_path / "pseudo" / "m.csv")
    assert len(table) == 140 and table["image"].str.startswith("eval/images/").all()  # every test image at 0
    assert main(["pseudo", *over, f"submit.checkpoints=[{runs / 'm'}]", "pseudo.threshold=0.2",
                 f"pseudo.out={tmp_path / 'sure.csv'}"]) == 0
    sure = pd.read_csv(tmp_path / "sure.csv")
    assert len(sure) < 140 and (sure["confidence"] >= 0.2).all()

    caplog.clear()
    with_pseudo = tiny_overrides(synth_root, runs, **{"run.name": "exp", "split.folds": 2,
                                                      "data.pseudo": str(tmp_path / "pseudo" / "m.csv")})
    assert main(["cv", *with_pseudo]) == 0
    for k in range(2):
        log = (runs / "exp" / f"fold{k}" / "train.log").read_text()
        n_val = len(pd.read_csv(runs / "exp" / f"fold{k}" / "oof.csv"))
        assert f"{210 - n_val + 140} train / {n_val} val images" in log  # the 140 join training, every fold
    oof = pd.read_csv(runs / "exp" / "oof.csv")
    assert len(oof) == 210 and not oof["image"].str.startswith("eval/").any()  # never validation

    out = tmp_path / "p.csv"
    assert main(["submit", *with_pseudo, f"submit.checkpoints=[{runs / 'exp'}]", f"submit.out={out}"]) == 0
    assert main(["submit", *over, f"submit.checkpoints=[{runs / 'm'}]", f"submit.out={tmp_path / 'plain.csv'}"]) == 0
    book = pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str).fillna("")
    assert book["pseudo"].tolist() == [str(tmp_path / "pseudo" / "m.csv"), ""]


def test_a_pseudo_table_naming_an_unknown_class_or_image_is_refused_by_row(synth_root, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,confidence\neval/images/nope.jpg,wear/male/<30,0.9\n")
    over = tiny_overrides(synth_root, tmp_path / "runs", **{"data.pseudo": str(bad)})
    assert main(["train", *over]) == 2
    bad.write_text("image,label,confidence\neval/images/x.jpg,99,0.9\n")
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "row 2: image" in err and "row 2: label '99'" in err and "Traceback" not in err


def test_an_older_ledger_is_upgraded_before_a_row_is_appended(tmp_path):
    from baseline import ledger

    book = tmp_path / "ledger.csv"
    old = ledger.COLUMNS[:-1]
    with open(book, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        w.writerow(["a.csv", "abc", "t", "u", "g", "m", "equal", "0.5", "0.5", "false", ""])
    ledger.upgrade(book)
    df = ledger.read(book)
    assert list(df.columns) == ledger.COLUMNS and df["file"].tolist() == ["a.csv"] and df["pseudo"].tolist() == [""]
