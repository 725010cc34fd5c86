"""`baseline cv`: every fold as one experiment, resumable; its folder works for ensemble and submit."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from sklearn.metrics import f1_score

from baseline.cli import main
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_cv_trains_every_fold_resumes_and_feeds_submit(synth_root, tmp_path, monkeypatch, caplog):
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "exp", "split.folds": 2})
    assert main(["cv", *over]) == 0
    exp = runs / "exp"
    cv = json.loads((exp / "cv.json").read_text())
    oof = pd.read_csv(exp / "oof.csv")
    assert [f["fold"] for f in cv["folds"]] == [0, 1] and len(cv["split_hashes"]) == 1
    assert len(oof) == 210 and oof.path.is_unique and sorted(oof.fold.unique()) == [0, 1]  # every image once
    assert cv["oof_f1"] == pytest.approx(f1_score(oof.label, oof.pred, average="macro"))
    for k in range(2):
        summary = json.loads((exp / f"fold{k}" / "summary.json").read_text())
        assert summary["fold"] == k and cv["folds"][k]["best_metric"] == summary["best_metric"]

    # a stopped experiment: fold 0 lost; running the same command again trains fold 0 only
    fold1 = (exp / "fold1" / "checkpoints" / "best.pt").stat().st_mtime_ns
    shutil.rmtree(exp / "fold0")
    caplog.clear()
    assert main(["cv", *over]) == 0
    assert (exp / "fold1" / "checkpoints" / "best.pt").stat().st_mtime_ns == fold1
    assert (exp / "fold0" / "checkpoints" / "best.pt").is_file()
    assert "fold 1 finished, skipped" in caplog.text and "fold 0 finished, skipped" not in caplog.text

    # the experiment folder is a member and a submission source: all its folds
    monkeypatch.chdir(tmp_path)
    assert main(["ensemble", str(exp), "--name", "one"]) == 0
    out = tmp_path / "cv.csv"
    assert main(["submit", *over, f"submit.checkpoints=[{exp}]", f"submit.out={out}"]) == 0
    row = pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str).iloc[-1]
    assert row.members == "exp/fold0;exp/fold1"
    assert float(row.cv_f1) == pytest.approx(json.loads((exp / "cv.json").read_text())["oof_f1"], abs=1e-4)

    # on the built-in data, `lb FILE` without a score reads it off eval/truth.csv, the data's "site"
    truth = pd.read_csv(synth_root / "eval" / "truth.csv").merge(pd.read_csv(out), on="ImageID")
    assert main(["lb", "cv.csv", *over]) == 0  # the same ledger, by the one rule
    lb = float(pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str).iloc[-1].lb)
    assert lb == pytest.approx(f1_score(truth.ans_x, truth.ans_y, average="macro"), abs=1e-5)


@pytest.mark.slow
def test_refit_trains_every_fold_for_the_chosen_epochs_and_stands_in_with_the_experiments_oof(
        synth_root, tmp_path, monkeypatch):
    import torch

    from baseline.submit import ensemble

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "exp", "split.folds": 2, "train.epochs": 3})
    assert main(["cv", *over]) == 0
    exp = runs / "exp"
    best = [f["best_epoch"] for f in json.loads((exp / "cv.json").read_text())["folds"]]
    assert main(["refit", str(exp), "log.wandb.mode=disabled"]) == 0
    summary = json.loads((exp / "refit" / "summary.json").read_text())
    assert summary["fold"] == -1 and summary["epochs_done"] == max(1, round(sum(best) / 2))
    assert not (exp / "refit" / "oof.csv").exists()  # nothing held out, so no out-of-fold predictions
    saved = torch.load(exp / "refit" / "checkpoints" / "best.pt", weights_only=True)
    assert saved["epoch"] == summary["epochs_done"]  # the last epoch is the one to use
    log = (exp / "refit" / "train.log").read_text()
    assert "210 train / 0 val images" in log  # every fold's people train

    member = ensemble.load_member(exp / "refit")
    assert member.runs == [exp / "refit"] and member.oof.equals(ensemble.load_member(exp).oof)
    assert main(["ensemble", str(exp / "refit"), "--name", "r"]) == 0
    out = tmp_path / "refit.csv"
    assert main(["submit", *over, f"submit.ensemble={tmp_path / 'ensembles' / 'r.yaml'}", f"submit.out={out}"]) == 0
    row = pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str).iloc[-1]
    assert row.members == "exp/refit" and float(row.cv_f1) == pytest.approx(
        json.loads((exp / "cv.json").read_text())["oof_f1"], abs=1e-4)
