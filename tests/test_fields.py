"""model.task: one model per field, and field members mixed with 18-way members into one submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from baseline.config import ConfigError
from baseline.data.competition import CLASSES, combine, field_classes, field_of, field_of_classes, field_probs
from baseline.submit import fields


def test_field_classes_name_their_field_and_the_product_keeps_each_fields_marginal():
    assert field_classes("gender") == ["gender:male", "gender:female"]
    assert field_of_classes(field_classes("age")) == "age" and field_of_classes(CLASSES) is None
    rng = np.random.default_rng(0)
    m, g, a = (rng.dirichlet(np.ones(k), size=5) for k in (3, 2, 3))
    joint = combine({"mask": m, "gender": g, "age": a})
    assert joint.shape == (5, 18) and np.allclose(joint.sum(1), 1)
    for f, p in (("mask", m), ("gender", g), ("age", a)):
        assert np.allclose(field_probs(joint, f), p)
    labels = np.arange(18)
    assert (field_of(labels, "mask") * 6 + field_of(labels, "gender") * 3 + field_of(labels, "age") == labels).all()


def test_field_members_mix_with_an_18_way_member_field_by_field():
    rng = np.random.default_rng(1)
    m, g, a = (rng.dirichlet(np.ones(k), size=4) for k in (3, 2, 3))
    full = rng.dirichlet(np.ones(18), size=4)
    members = [(m, field_classes("mask"), 1.0), (g, field_classes("gender"), 1.0), (a, field_classes("age"), 1.0)]
    probs, classes = fields.mix(members, ["m", "g", "a"])
    assert classes == CLASSES and np.allclose(probs, combine({"mask": m, "gender": g, "age": a}))
    probs, _ = fields.mix([*members, (full, CLASSES, 3.0)], ["m", "g", "a", "full"])
    for f, p in (("mask", m), ("gender", g), ("age", a)):  # weight 1 for the field member, 3 for the 18-way one
        assert np.allclose(field_probs(probs, f), (p + 3 * field_probs(full, f)) / 4)
    with pytest.raises(ConfigError, match="predict no gender"):
        fields.mix(members[::2], ["m", "a"])


def test_a_one_field_model_needs_the_mask_layout():
    from baseline.config import load_config

    with pytest.raises(ConfigError, match="model.task=age"):
        load_config(None, ["model.task=age", "data.format=folder"])


@pytest.mark.slow
def test_a_model_per_field_and_an_18_way_model_in_one_submission(synth_root, tmp_path, monkeypatch):
    from baseline.cli import main
    from tests.conftest import tiny_overrides

    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for task in ("mask", "gender", "age", "all"):
        assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": task, "model.task": task})]) == 0
    assert json.loads((runs / "gender" / "classes.json").read_text()) == ["gender:male", "gender:female"]
    oof = pd.read_csv(runs / "gender" / "oof.csv")
    assert list(oof.columns[-2:]) == ["p0", "p1"] and set(oof.label) <= {0, 1}
    out = tmp_path / "mixed.csv"
    members = ",".join(str(runs / t) for t in ("mask", "gender", "age", "all"))
    assert main(["submit", *tiny_overrides(synth_root, runs), f"submit.checkpoints=[{members}]",
                 f"submit.out={out}"]) == 0
    sub, info = pd.read_csv(out), pd.read_csv(synth_root / "eval" / "info.csv")
    assert sub.ImageID.tolist() == info.ImageID.tolist() and sub.ans.between(0, 17).all()
    # submit.person_vote=auto (the default) measured voting on each member's own field; a mask member has none
    checked = {t: json.loads((runs / t / "person_vote.json").read_text()) for t in ("gender", "age", "all")}
    assert all(c["images"] == 70 and 0 < c["purity"] <= 1 and "f1_voted" in c for c in checked.values())
    assert not (runs / "mask" / "person_vote.json").exists()
    row = pd.read_csv(tmp_path / "submissions" / "ledger.csv").iloc[-1]
    assert row.members == "mask[mask];gender[gender];age[age];all" and float(row.cv_f1) > 0
    assert main(["submit", *tiny_overrides(synth_root, runs), f"submit.checkpoints=[{runs / 'mask'}]",
                 f"submit.out={out}"]) == 2  # one field alone is no submission


def test_an_oof_fitted_ensemble_refuses_a_one_field_member_with_the_way_to_mix_it(tmp_path):
    from baseline.config import save_yaml
    from baseline.config.load import load_config
    from baseline.submit import ensemble

    run = tmp_path / "age"
    (run / "checkpoints").mkdir(parents=True)
    save_yaml(load_config(None, ["model.task=age"]), run / "config.yaml")
    member = ensemble.Member("age", run, [run], "h", pd.DataFrame({"image": ["a"], "label": [0], "p0": [1.0]}))
    with pytest.raises(ConfigError, match="one-field model.*submit.checkpoints"):
        ensemble.check_members([member, member])
