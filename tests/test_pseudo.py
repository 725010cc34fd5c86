"""Pseudo-labels: confident test predictions as an extra training table, per fold from teachers that never saw
its validation people, in training and never in validation; the ledger says which submissions used them."""

import csv

import pandas as pd
import pytest

from baseline.cli import main
from baseline.data.competition import CLASSES
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_pseudo_labels_per_fold_come_from_teachers_that_never_saw_its_people(synth_root, tmp_path, monkeypatch,
                                                                              capsys):
    """A 2-fold teacher experiment labels the test images once per fold (fold k's rows by its fold-k run
    alone, which never saw fold k's validation people) and once with every run for a refit; a student cv
    takes its fold's rows into training, never validation; a table from another split, or one without
    folds, is refused for a fold run; the ledger says which submissions used pseudo-labels."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "t", "split.folds": 2})
    assert main(["cv", *over]) == 0
    assert main(["pseudo", *over, f"submit.checkpoints=[{runs / 't'}]", "pseudo.threshold=0"]) == 0
    table = pd.read_csv(tmp_path / "pseudo" / "t.csv", dtype=str)
    assert table.groupby("fold").size().to_dict() == {"0": 140, "1": 140, "all": 140}  # every test image at 0
    assert table.image.str.startswith("eval/images/").all() and table.split_hash.nunique() == 1
    assert set(table.teachers[table.fold == "0"]) == {"t/fold0"} and set(table.teachers[table.fold == "all"]) == {
        "t/fold0;t/fold1"}
    fold0 = tmp_path / "fold0.csv"  # what the fold-0 teacher alone predicts is what fold 0's rows say
    assert main(["submit", *over, f"submit.checkpoints=[{runs / 't' / 'fold0'}]", f"submit.out={fold0}"]) == 0
    mine = table[table.fold == "0"].assign(ImageID=lambda d: d.image.str.removeprefix("eval/images/"))
    answer = pd.read_csv(fold0, dtype=str).set_index("ImageID")["ans"]
    assert [CLASSES[int(a)] for a in answer.loc[mine.ImageID]] == mine.label.tolist()
    assert main(["pseudo", *over, f"submit.checkpoints=[{runs / 't'}]", "pseudo.threshold=0.2",
                 f"pseudo.out={tmp_path / 'sure.csv'}"]) == 0
    sure = pd.read_csv(tmp_path / "sure.csv")
    assert len(sure) < 3 * 140 and (sure["confidence"] >= 0.2).all()

    with_pseudo = tiny_overrides(synth_root, runs, **{"run.name": "exp", "split.folds": 2,
                                                      "data.pseudo": str(tmp_path / "pseudo" / "t.csv")})
    assert main(["cv", *with_pseudo]) == 0
    for k in range(2):
        log = (runs / "exp" / f"fold{k}" / "train.log").read_text()
        n_val = len(pd.read_csv(runs / "exp" / f"fold{k}" / "oof.csv"))
        assert f"{210 - n_val + 140} train / {n_val} val images" in log  # its fold's 140 join training
        assert f"labelled by t/fold{k}" in log
    oof = pd.read_csv(runs / "exp" / "oof.csv")
    assert len(oof) == 210 and not oof["image"].str.startswith("eval/").any()  # never validation
    assert set(table["round"]) == {"1"}  # teachers without pseudo-labels: round 1
    assert main(["pseudo", *with_pseudo, f"submit.checkpoints=[{runs / 'exp'}]", "pseudo.threshold=0",
                 f"pseudo.out={tmp_path / 'r2.csv'}"]) == 0  # students of round 1 teach round 2, per fold as before
    second = pd.read_csv(tmp_path / "r2.csv", dtype=str)
    assert set(second["round"]) == {"2"} and set(second.teachers[second.fold == "1"]) == {"exp/fold1"}

    capsys.readouterr()
    three = tiny_overrides(synth_root, runs, **{"run.name": "m", "split.folds": 3})
    assert main(["train", *three]) == 0  # a teacher on another split file (3 folds)
    assert main(["pseudo", *three, f"submit.checkpoints=[{runs / 'm'}]", f"pseudo.out={tmp_path / 'm.csv'}",
                 "pseudo.threshold=0"]) == 0
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "x", "split.folds": 2,
                                                               "data.pseudo": str(tmp_path / "m.csv")})]) == 2
    table.drop(columns=["fold", "teachers", "split_hash"]).to_csv(tmp_path / "old.csv", index=False)
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "y", "split.folds": 2,
                                                               "data.pseudo": str(tmp_path / "old.csv")})]) == 2
    err = capsys.readouterr().err
    assert "made by teachers on another split file" in err and "has no fold column" in err
    assert "Traceback" not in err

    out = tmp_path / "p.csv"
    assert main(["submit", *with_pseudo, f"submit.checkpoints=[{runs / 'exp'}]", f"submit.out={out}"]) == 0
    book = pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str).fillna("")
    assert book.set_index("file").loc[str(out), "pseudo"] == str(tmp_path / "pseudo" / "t.csv")
    assert book.set_index("file").loc[str(fold0), "pseudo"] == ""


def test_a_pseudo_table_naming_an_unknown_class_or_image_is_refused_by_row(synth_root, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label,confidence,fold\neval/images/nope.jpg,wear/male/<30,0.9,0\n")
    over = tiny_overrides(synth_root, tmp_path / "runs", **{"data.pseudo": str(bad)})
    assert main(["train", *over]) == 2
    bad.write_text("image,label,confidence,fold\neval/images/x.jpg,99,0.9,0\n")
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "row 2: image" in err and "row 2: label '99'" in err and "Traceback" not in err


def test_an_older_ledger_is_upgraded_before_a_row_is_appended(tmp_path):
    from baseline.submit import ledger

    book = tmp_path / "ledger.csv"
    old = ledger.COLUMNS[:-2]  # before pseudo and labels
    with open(book, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(old)
        w.writerow(["a.csv", "abc", "t", "u", "g", "m", "equal", "0.5", "0.5", "false", ""])
    ledger.upgrade(book)
    df = ledger.read(book)
    assert list(df.columns) == ledger.COLUMNS and df["file"].tolist() == ["a.csv"] and df["pseudo"].tolist() == [""]
    assert df["labels"].tolist() == [""]


def test_each_field_keeps_its_own_threshold_and_names_its_own_label():
    import numpy as np

    from baseline.config import load_config
    from baseline.submit.pseudo import confident, kept

    def image(mask, gender, age, p_mask, p_gender, p_age):
        """18-class probabilities whose marginals put p_* on the given values (independent fields)."""
        m, g, a = np.full(3, (1 - p_mask) / 2), np.full(2, 1 - p_gender), np.full(3, (1 - p_age) / 2)
        m[mask], g[gender], a[age] = p_mask, p_gender, p_age
        return np.einsum("i,j,k->ijk", m, g, a).ravel()

    probs = np.stack([image(0, 1, 2, 0.6, 0.95, 0.85),  # worn at 0.6 >= 0.5: kept
                      image(1, 0, 0, 0.9, 0.95, 0.85),  # incorrect at 0.9 < 0.95: dropped
                      image(2, 0, 1, 0.99, 0.85, 0.99),  # gender 0.85 < 0.9: dropped
                      image(2, 1, 0, 0.97, 0.92, 0.81)])  # every field above its own: kept
    rules = ["pseudo.threshold=0", "pseudo.gender=0.9", "pseudo.age=0.8", "pseudo.mask=[0.5,0.95,0.95]"]
    assert kept(load_config(None, rules), probs).tolist() == [True, False, False, True]
    test = type("T", (), {"df": pd.DataFrame({"path": [f"data/eval/images/{i}.jpg" for i in range(4)]})})()
    rows = confident(load_config(None, ["data.root=data", *rules]), test, probs, CLASSES)
    assert rows["label"].tolist() == [CLASSES[0 * 6 + 1 * 3 + 2], CLASSES[2 * 6 + 1 * 3 + 0]]
    top = load_config(None, ["pseudo.threshold=0.5"])  # the 18 classes alone: 0.48, 0.73, 0.83, 0.72
    assert kept(top, probs).tolist() == [False, True, True, True]
