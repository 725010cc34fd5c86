"""submit.person_vote: grouping photos into people, the vote, the out-of-fold check and a voted submission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from baseline.submit import people


def test_a_group_agrees_on_gender_and_age_and_keeps_each_photos_mask():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(18) * 0.3, size=14)
    groups = np.repeat([0, 1], 7)
    voted = people.vote(probs, groups)
    assert np.allclose(voted.sum(1), 1)
    y = voted.argmax(1)
    for g in (0, 1):
        assert len(set((y[groups == g] // 3) % 2)) == 1 and len(set(y[groups == g] % 3)) == 1  # one gender, one age
    assert np.allclose(voted.reshape(-1, 3, 6).sum(2), probs.reshape(-1, 3, 6).sum(2))  # masks untouched
    assert (y // 6 == probs.reshape(-1, 3, 6).sum(2).argmax(1)).all()  # each photo's most likely mask
    gender_only = people.vote(probs, groups, ["gender"]).reshape(-1, 3, 2, 3)
    assert len({int(v) for v in gender_only.sum((1, 3)).argmax(1)[:7]}) == 1
    ages_given_gender = probs.reshape(-1, 3, 2, 3).sum(1)
    ages_given_gender = ages_given_gender / ages_given_gender.sum(2, keepdims=True)
    assert np.allclose(gender_only.sum(1) / gender_only.sum((1, 3))[:, :, None], ages_given_gender)


def test_grouping_finds_people_and_works_on_a_set_without_them():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(20, 32))
    emb = np.repeat(centres, 7, axis=0) + 0.1 * rng.normal(size=(140, 32))
    groups = people.groups_of(emb, 7)
    truth = np.repeat(np.arange(20), 7)
    assert people.purity(groups, truth) == 1.0 and groups.max() + 1 == 20
    mixed = np.arange(140) % 20  # every group mixes seven people
    assert people.purity(mixed, truth) == pytest.approx(1 / 7)
    alone = people.groups_of(rng.normal(size=(30, 32)), 7)  # one photo a person: still a grouping, no error
    assert len(alone) == 30 and alone.max() + 1 == 4
    assert list(people.groups_of(np.ones((1, 4)), 7)) == [0]


@pytest.mark.slow
def test_a_voted_submission_groups_the_test_photos_into_people(tmp_path, caplog):
    from baseline.cli import main
    from baseline.data.contest import write_contest
    from baseline.runfolder import RunFolder
    from tests.conftest import tiny_overrides

    root = write_contest(tmp_path / "c", "contest_a", people=15, seed=0)
    over = tiny_overrides(root, tmp_path / "runs", **{"run.name": "r", "train.epochs": 2})
    assert main(["train", *over]) == 0
    out = tmp_path / "sub.csv"
    caplog.set_level("INFO")
    assert main(["submit", *over, f"submit.out={out}", "submit.person_vote=auto"]) == 0
    check = json.loads(RunFolder(tmp_path / "runs" / "r").person_vote.read_text())
    assert check["images"] == 35 and check["people"] == 5 and check["groups"] == 5 and 0 < check["purity"] <= 1
    assert "submit.person_vote=auto: on the members' validation images voting" in caplog.text
    assert main(["submit", *over, f"submit.out={out}", "submit.person_vote=on"]) == 0
    sub, groups = pd.read_csv(out), pd.read_csv(people.groups_file(out))
    assert groups.ImageID.tolist() == sub.ImageID.tolist() and groups.person.nunique() == 10  # 70 photos / 7
    both = sub.assign(person=groups.person)
    assert (both.groupby("person").ans.agg(lambda a: ((a // 3) % 2).nunique()) == 1).all()  # one gender a group
    assert (both.groupby("person").ans.agg(lambda a: (a % 3).nunique()) == 1).all()  # one age a group
    truth = pd.read_csv(root / "eval" / "people.csv").set_index("ImageID").loc[groups.ImageID, "person"]
    assert people.purity(groups.person.to_numpy(), truth.to_numpy()) > 0.5


def test_cv_reports_what_voting_does_on_each_folds_validation_images(tiny_cv, synth_root, tmp_path):
    import shutil

    from baseline.config import load_config
    from baseline.cv import with_person_vote
    from baseline.runfolder import Experiment

    exp = Path(shutil.copytree(tiny_cv, tmp_path / "exp"))
    cfg = load_config(None, [f"data.root={synth_root}", "submit.person_vote=auto"])
    out = with_person_vote(cfg, exp, Experiment(exp).cv())
    folds = [json.loads(r.person_vote.read_text()) for r in Experiment(exp).fold_runs()]
    assert len(folds) == 3 and sum(f["images"] for f in folds) == 210
    assert out["person_vote"]["gain"] == pytest.approx(np.mean([f["f1_voted"] - f["f1"] for f in folds]))
    assert json.loads(Experiment(exp).cv_file.read_text())["person_vote"] == out["person_vote"]
    off = load_config(None, [f"data.root={synth_root}", "submit.person_vote=off"])
    assert "person_vote" not in with_person_vote(off, exp, {"oof_f1": 0.5})  # off: nothing measured
