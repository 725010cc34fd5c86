"""`baseline data audit`: wrong labels written into a contest-like set are found from out-of-fold
predictions (cleanlab), reported per person and field, and offered as a data.corrections file."""

import pandas as pd
import pytest

from baseline.cli import main
from baseline.config import AuditCfg, load_config
from baseline.data.layouts import read_table
from baseline.data.synth import inject_label_errors, write_synth
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_audit_finds_the_injected_wrong_labels_and_writes_corrections(tmp_path, capsys):
    root = write_synth(tmp_path / "data", people=60, seed=1)
    injected = inject_label_errors(root, share=0.1, seed=1)  # 6 people: gender or age bucket wrong
    # threads pinned: a reduction's order changes the float sums, and a 10-epoch run follows them
    over = tiny_overrides(root, tmp_path / "runs", **{"run.name": "exp", "data.img_size": 48, "train.epochs": 10,
                                                      "train.threads": 2})
    assert main(["cv", *over]) == 0
    fix = tmp_path / "fix.csv"
    assert main(["data", "audit", str(tmp_path / "runs" / "exp"), *over, "--corrections", str(fix)]) == 0
    found = pd.read_csv(tmp_path / "runs" / "exp" / "label_issues.csv", dtype={"id": str})
    assert (tmp_path / "runs" / "exp" / "label_issues.png").is_file()
    flagged, wrong = set(found["id"][found["sure"]]), set(injected["id"])  # what it puts forward
    recall, precision = len(flagged & wrong) / len(wrong), len(flagged & wrong) / max(len(flagged), 1)
    assert recall >= 0.8 and precision >= 0.5, (found, injected)
    assert set(found["id"]) >= flagged  # the unsure ones are listed for review too
    assert "suspected label issue(s)" in capsys.readouterr().out

    # the corrections file: the fields it names, back to the truth's bucket, and training accepts it
    fixes = pd.read_csv(fix, dtype=str)
    hits = fixes.merge(injected, on=["id", "field"])
    assert len(hits) >= 0.8 * len(injected)
    for r in hits.itertuples():
        if r.field == "gender":
            assert r.value == r.true
        else:
            assert (int(r.value) >= 60) == (int(r.true) >= 60) and (int(r.value) < 30) == (int(r.true) < 30)
    table = read_table(load_config(None, [*over, f"data.corrections={fix}"]))
    assert len(table.df.attrs["corrections"]) == len(fixes)

    # a cv on the corrected labels validates on the model's own suggestions: its summary and `baseline runs`
    # say so, and compare it with the first cv on the images both label alike
    import json

    fixed = [*over, "run.name=fixed", "train.epochs=2", f"data.corrections={fix}"]
    assert main(["cv", *fixed]) == 0
    cv, first = (json.loads((tmp_path / "runs" / n / "cv.json").read_text()) for n in ("fixed", "exp"))
    assert cv["corrected_people"] == fixes["id"].nunique() and cv["labels"] != first["labels"]
    assert cv["unchanged_rows"] == 7 * (60 - cv["corrected_people"]) and 0 <= cv["oof_f1_unchanged"] <= 1
    capsys.readouterr()
    assert main(["runs", *over]) == 0
    note = next(ln for ln in capsys.readouterr().out.splitlines() if "validated on different labels" in ln)
    assert f"on the {cv['unchanged_rows']} of 420 images they label alike" in note


def test_audit_needs_an_experiment_with_oof(tmp_path, capsys, synth_root):
    assert main(["data", "audit", f"data.root={synth_root}"]) == 2
    assert main(["data", "audit", str(tmp_path), f"data.root={synth_root}"]) == 2
    err = capsys.readouterr().err
    assert "name the experiment folder" in err and "no oof.csv" in err and "Traceback" not in err



def _people_oof(people: list[tuple[str, int, int, int, int, float]]):
    """An OOF and a table for people (id, gender, age, the gender and age bucket the predictions say,
    with what probability), seven photos each, every photo's mask state predicted right."""
    from types import SimpleNamespace

    import numpy as np

    from baseline.data.competition import label
    from baseline.oof import frame

    table, probs = [], []
    for pid, g, age, pg, pa, p in people:
        for k, m in enumerate([0] * 5 + [1, 2]):
            table.append({"path": f"/d/{pid}/{k}.jpg", "label": label(m, g, age), "group": pid, "age": age})
            row = np.full(18, (1 - p) / 17)
            row[label(m, pg, 0) + pa] = p
            probs.append(row)
    df = pd.DataFrame(table)
    return frame(list(df.path), list(df.path), df.label, df.group, np.array(probs)), SimpleNamespace(df=df)


def test_audit_is_sure_of_confident_flags_away_from_an_age_edge_and_corrects_only_those():
    from baseline.audit import audit_people, corrections, near_edge
    from baseline.data.competition import age_bucket

    ages = [20, 24, 27, 35, 41, 45, 52, 55, 60, 60]
    clean = [(f"{i:03d}", i % 2, ages[i % 10], i % 2, age_bucket(ages[i % 10]), 0.8) for i in range(60)]
    wrong = [("900", 0, 45, 0, 0, 0.9),    # given 45, looks under 30: far from an edge, sure
             ("901", 1, 60, 1, 1, 0.75),   # given 60, looks 30-59 (0.82): at the edge of 60, listed, not sure
             ("902", 0, 24, 1, 0, 0.95),   # given male, looks female: sure
             ("903", 0, 58, 0, 2, 0.92)]   # given 58, looks >=60 at 0.94: at the edge but past edge_score
    oof, table = _people_oof(clean + wrong)
    found = audit_people(oof, table, AuditCfg(min_score=0.6, age_margin=2, edge_score=0.85))
    by = found.set_index(["id", "field"])
    assert set(by.index) == {("900", "age"), ("901", "age"), ("902", "gender"), ("903", "age")}
    assert by.loc[("900", "age"), "sure"] and by.loc[("902", "gender"), "sure"] and by.loc[("903", "age"), "sure"]
    assert not by.loc[("901", "age"), "sure"]
    fixes = corrections(found, table)
    assert set(zip(fixes["id"], fixes["field"])) == {("900", "age"), ("902", "gender"), ("903", "age")}
    assert fixes.set_index("id").loc["900", "value"] == 29  # the nearest age of the suggested bucket
    assert fixes.set_index("id").loc["903", "value"] == 60
    assert "903" not in set(corrections(audit_people(oof, table, AuditCfg(edge_score=1.0)), table)["id"])
    no_margin = corrections(audit_people(oof, table, AuditCfg(age_margin=0)), table)
    assert set(no_margin["id"]) == {"900", "901", "902", "903"}
    assert near_edge(58, 2, 2) and near_edge(61, 1, 2) and not near_edge(57, 2, 2)  # (age, suggested, margin)
    assert near_edge(29, 1, 2) and not near_edge(45, 0, 2)
    assert not near_edge(60, 0, 2) and not near_edge(58, 0, 2, (30, 58))  # two buckets away: no edge question
    # trained at [30, 58], a 60 suggested 30-57 is still at the official edge: the score asks whether they are 60
    assert near_edge(60, 1, 2, (30, 58)) and near_edge(59, 1, 2, (30, 58)) and not near_edge(63, 1, 2, (30, 58))


def test_audit_lists_a_confident_contradiction_that_cleanlab_does_not_count():
    """A strong model predicts every clean person's gender at 0.97, so cleanlab's threshold for a class
    is 0.97 and a flipped person predicted at 0.85 for the other gender is not in its confident joint:
    listed for review, but not sure, since cleanlab estimates no wrong gender to support it."""
    import numpy as np
    from cleanlab.filter import find_label_issues

    from baseline.audit import audit_people
    from baseline.data.competition import field_of
    from baseline.data.competition import field_probs as marginal

    clean = [(f"{i:03d}", i % 2, 20 + i % 30, i % 2, (20 + i % 30) // 30, 0.97) for i in range(60)]
    oof, table = _people_oof(clean + [("900", 0, 24, 1, 0, 0.85)])
    by_person = oof.groupby("group")
    gender = np.stack(by_person.apply(lambda g: marginal(g[[f"p{k}" for k in range(18)]].to_numpy(), "gender")
                                      .mean(0), include_groups=False))
    given = by_person["label"].first().map(lambda y: field_of(np.array(y), "gender")).to_numpy()
    assert not find_label_issues(given, gender, filter_by="prune_by_noise_rate")[-1]  # cleanlab alone misses it
    found = audit_people(oof, table, AuditCfg()).set_index(["id", "field"])
    assert ("900", "gender") in found.index and not found.loc[("900", "gender"), "sure"]
    assert len(found) == 1  # and nothing clean is listed


def test_sure_flags_are_bounded_by_what_the_fields_oof_supports(caplog):
    """Ten people given the wrong gender, seen at 0.9 by an OOF that is right on the others: every one is
    sure. The same flags from an age OOF that gets a quarter of the people wrong are listed, none sure;
    and a field's sure flags never outnumber cleanlab's estimate of its wrong labels."""
    import logging

    import numpy as np

    from baseline.audit import audit_people, bound_sure

    ages = [20, 24, 27, 35, 41, 45, 52]
    clean = [(f"{i:03d}", i % 2, ages[i % 7], i % 2, ages[i % 7] // 30, 0.9) for i in range(90)]
    flipped = [(f"9{i:02d}", 0, 24, 1, 0, 0.9) for i in range(10)]
    with caplog.at_level(logging.INFO, logger="baseline"):
        found = audit_people(*_people_oof(clean + flipped), AuditCfg()).set_index(["id", "field"])
    assert found["sure"].sum() == 10 and found.index.get_level_values("field").unique().tolist() == ["gender"]
    assert "gender: out-of-fold accuracy 0.900 (sure flags need 0.85), cleanlab estimates" in caplog.text
    # an age OOF that puts 25 of 100 people (20-year-olds) in 30-59 at 0.9: a field it cannot be sure of
    confused = [(f"{i:03d}", i % 2, 20, i % 2, 1 if i < 25 else 0, 0.9) for i in range(100)]
    found = audit_people(*_people_oof(confused), AuditCfg())
    assert (found["field"] == "age").sum() > 0 and not found["sure"].any()
    rows = pd.DataFrame({"field": "age", "score": [0.7, 0.9, 0.8, 0.95], "sure": [True, True, True, False]})
    kept = bound_sure(rows.copy(), rows["field"] == "age", "age", 0.95, 2, 0.85)
    assert kept["sure"].tolist() == [False, True, True, False]  # the two most confident of the sure ones
    assert not bound_sure(rows.copy(), rows["field"] == "age", "age", 0.8, 2, 0.85)["sure"].any()
    assert np.isfinite(found["score"]).all()


def test_a_mask_flag_is_sure_only_with_its_swapped_other_half():
    """A person's incorrect-mask photo that looks worn is the model confusing two states; the same photo
    with a worn one of the same person that looks incorrect is two files swapped."""
    from baseline.audit import swapped

    rows = pd.DataFrame([
        {"id": "1", "field": "mask", "given": "incorrect", "suggested": "wear"},
        {"id": "2", "field": "mask", "given": "incorrect", "suggested": "wear"},
        {"id": "2", "field": "mask", "given": "wear", "suggested": "incorrect"},
        {"id": "3", "field": "mask", "given": "wear", "suggested": "incorrect"},
        {"id": "3", "field": "gender", "given": "incorrect", "suggested": "wear"}])
    assert swapped(rows).tolist() == [False, True, True, False, False]


def test_audit_votes_several_experiments_by_averaging_their_oof(tmp_path):
    import numpy as np

    from baseline.audit import voted_oof
    from baseline.cli import parse
    from baseline.config import ConfigError
    from baseline.oof import prob_columns

    oof, _ = _people_oof([(f"{i:03d}", i % 2, 40, i % 2, 1, 0.8) for i in range(4)])
    cols = prob_columns(oof)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    oof.to_csv(a / "oof.csv", index=False)
    other = oof.copy()
    other[cols] = np.roll(oof[cols].to_numpy(), 1, axis=1)
    other.iloc[::-1].to_csv(b / "oof.csv", index=False)  # rows in another order: matched by path
    voted = voted_oof([a, b])
    assert np.allclose(voted[cols].to_numpy(), (oof[cols].to_numpy() + other[cols].to_numpy()) / 2)
    assert (voted["pred"] == voted[cols].to_numpy().argmax(1)).all()

    other["label"] = (other["label"] + 1) % 18  # trained on other labels: no vote
    other.to_csv(b / "oof.csv", index=False)
    with pytest.raises(ConfigError, match="other labels"):
        voted_oof([a, b])
    oof.iloc[1:].to_csv(b / "oof.csv", index=False)
    with pytest.raises(ConfigError, match="other images"):
        voted_oof([a, b])

    args = parse(["data", "audit", str(a), str(b), "data.root=x", "--corrections", "f.csv"])
    assert args.source == [str(a), str(b)] and args.overrides == ["data.root=x"] and args.corrections == "f.csv"
    assert parse(["data", "check", "data.root=x"]).overrides == ["data.root=x"]


def test_audit_reads_ages_in_the_buckets_the_experiment_trained_with(tmp_path):
    """An experiment trained with data.age_edges=[30, 58]: its OOF's third age column means 58 and older.
    A 58 it predicts there is no issue; a 60 it puts at 30-57 is more than 2 years from the edge (sure)."""
    from baseline.audit import audit_people, corrections, trained_edges
    from baseline.config import ConfigError, load_config, save_yaml
    from baseline.data.competition import age_bucket

    edges = (30, 58)
    ages = [20, 24, 27, 35, 41, 45, 52, 58, 60, 60]
    # probabilities below audit.edge_score (0.85) at the edges: a field's marginal is p + 5 (1 - p) / 17
    clean = [(f"{i:03d}", i % 2, ages[i % 10], i % 2, age_bucket(ages[i % 10], edges), 0.75) for i in range(60)]
    wrong = [("901", 1, 60, 1, 1, 0.85),   # given 60, looks 30-57: sure at these edges
             ("902", 0, 57, 0, 2, 0.7),    # given 57, looks 58+ (0.79): at the edge of 58, listed but not sure
             ("903", 0, 58, 0, 0, 0.85)]   # given 58, looks under 30: two buckets away, sure
    oof, table = _people_oof(clean + wrong)
    found = audit_people(oof, table, AuditCfg(), edges).set_index(["id", "field"])
    assert set(found.index) == {("901", "age"), ("902", "age"), ("903", "age")}  # clean 58s predicted 58+: fine
    assert found.loc[("901", "age"), "sure"] and found.loc[("901", "age"), "suggested"] == "30-57"
    assert not found.loc[("902", "age"), "sure"]
    fixes = corrections(found.reset_index(), table, edges)
    assert sorted(fixes.to_dict("records"), key=str) == [{"id": "901", "field": "age", "value": 57},
                                                         {"id": "903", "field": "age", "value": 29}]
    official = audit_people(oof, table, AuditCfg())  # the same OOF read at the official edges: the 58s flagged
    fifty_eights = {f"{i:03d}" for i in range(7, 60, 10)}
    assert fifty_eights <= set(official["id"]) and not official["sure"][official["id"].isin(fifty_eights)].any()

    runs = []
    for name, e in (("a", [30, 58]), ("b", [30, 58]), ("c", [30, 60])):
        (tmp_path / name / "fold0").mkdir(parents=True)
        save_yaml(load_config(None, [f"data.age_edges=[{e[0]},{e[1]}]"]), tmp_path / name / "fold0" / "config.yaml")
        runs.append(tmp_path / name)
    assert trained_edges(runs[:2]) == (30, 58) and trained_edges([tmp_path]) == (30, 60)  # no config: official
    with pytest.raises(ConfigError, match="other data.age_edges"):
        trained_edges(runs)

    table.df.loc[table.df["group"] == "901", "age"] = 45  # the data says 45, the experiment trained a 60
    with pytest.raises(ConfigError, match="person 901 is aged 45"):
        audit_people(oof, table, AuditCfg(), edges)


def test_injected_ages_are_errors_a_photo_can_show(tmp_path):
    """Every wrong age is in another official bucket and at least 3 years from the truth:
    a true 60 written as 58 (the contest sets draw them alike) would be an error no audit could find.
    The folder name says what train.csv says."""
    import numpy as np

    from baseline.data.competition import age_bucket
    from baseline.data.contest import write_contest
    from baseline.data.synth import _wrong_age

    rng = np.random.default_rng(0)
    for true in [*range(18, 61)] * 20:
        written = _wrong_age(rng, true, oldest=60)
        assert abs(written - true) >= 3 and 18 <= written <= 60, (true, written)
        assert abs(age_bucket(written) - age_bucket(true)) == 1, (true, written)
    root = write_contest(tmp_path / "c", "contest_a", people=40, seed=3, wrong=0.5)
    injected = pd.read_csv(root / "train" / "injected.csv", dtype=str)
    listed = pd.read_csv(root / "train" / "train.csv", dtype=str).set_index("id")
    assert len(injected) == 20 and (injected["field"] == "age").any()
    for r in injected.itertuples():
        row = listed.loc[r.id]
        assert row[r.field] == r.written != r.true
        assert row.path == f"{r.id}_{row.gender}_{row.race}_{row.age}"
        assert (root / "train" / "images" / row.path).is_dir()


def test_an_age_correction_lands_in_the_suggested_bucket_under_the_official_edges_too():
    """With data.age_edges=[30, 58] a 45 suggested >=58 becomes 60 (58 would count as 30-59 officially),
    and a 60 suggested 30-57 becomes 57 (in that bucket both ways)."""
    from baseline.audit import bucket_range, corrections

    assert bucket_range(2, (30, 58)) == (60, 120) and bucket_range(1, (30, 58)) == (30, 57)
    assert bucket_range(0, (30, 58)) == (0, 29) and bucket_range(2, (30, 60)) == (60, 120)
    _, table = _people_oof([("900", 0, 45, 0, 1, 0.9), ("901", 1, 60, 1, 2, 0.9)])
    found = pd.DataFrame([{"id": "900", "field": "age", "given": "30-57", "suggested": ">=58", "score": 0.9,
                           "sure": True}, {"id": "901", "field": "age", "given": ">=58", "suggested": "30-57",
                                           "score": 0.9, "sure": True}])
    fixes = corrections(found, table, (30, 58)).set_index("id")["value"].to_dict()
    assert fixes == {"900": 60, "901": 57}
