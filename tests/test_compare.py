"""`baseline compare A B`: a paired bootstrap over people says whether B beat A, or that it cannot tell."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from baseline.cli import main
from baseline.config import ConfigError, load_config
from baseline.runfolder import RunFolder
from baseline.submit import compare


def test_macro_f1_from_confusion_counts_is_scikit_learns():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    p[:100] = y[:100]
    y[y == 4] = 3  # a class that is only ever predicted counts, as in f1_score over the labels present
    conf = compare.confusions(y, p, np.zeros(len(y)), 5)[0]
    assert compare.macro_f1(conf) == pytest.approx(f1_score(y, p, average="macro", zero_division=0))


def broken_copy(exp, out, share=0.5, seed=0):
    """`exp` with the predictions of `share` of its people replaced by a confident wrong class."""
    shutil.copytree(exp, out)
    rng = np.random.default_rng(seed)
    for oof_file in sorted(out.glob("fold*/oof.csv")):
        oof = pd.read_csv(oof_file)
        people = sorted(oof["group"].astype(str).unique())
        bad = set(rng.choice(people, size=int(len(people) * share), replace=False))
        rows = oof["group"].astype(str).isin(bad).to_numpy()
        cols = [c for c in oof.columns if c.startswith("p") and c[1:].isdigit()]
        wrong = (oof["label"].to_numpy() + 1 + rng.integers(0, len(cols) - 1, len(oof))) % len(cols)
        oof.loc[rows, cols] = np.eye(len(cols))[wrong[rows]]
        oof.loc[rows, "pred"] = wrong[rows]
        oof.to_csv(oof_file, index=False)
    return out


@pytest.mark.slow
def test_an_experiment_against_itself_is_not_distinguishable(tiny_cv):
    c = compare.compare(tiny_cv, tiny_cv)
    assert c.difference == 0 and c.low <= 0 <= c.high
    assert c.verdict().startswith("not distinguishable") and c.people == 30
    assert len(c.folds) == 3 and list(c.fields["field"]) == ["mask", "gender", "age"] and len(c.classes) == 18


@pytest.mark.slow
def test_a_broken_experiment_is_worse_with_its_interval_below_zero(tiny_cv, tmp_path, capsys):
    broken = broken_copy(tiny_cv, tmp_path / "broken")
    c = compare.compare(tiny_cv, broken)
    assert c.high < 0 and c.verdict().startswith("broken is worse than exp")
    fields = c.fields.set_index("field")["difference"]
    assert (c.folds["difference"] < 0).all() and fields["gender"] < 0 and fields["age"] < 0
    assert main(["compare", str(tiny_cv), str(broken), f"run.dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "broken is worse than exp" in out and "per field:" in out
    assert (tmp_path / "runs" / "compare" / "exp_vs_broken.png").is_file()
    better = compare.compare(broken, tiny_cv)  # the other way round: better, the interval above zero
    assert better.low > 0 and better.verdict().startswith("exp is better than broken")


@pytest.mark.slow
def test_other_splits_or_labels_are_refused_naming_both(tiny_cv, tmp_path):
    other = shutil.copytree(tiny_cv, tmp_path / "other")
    for run in sorted(other.glob("fold*")):
        summary = RunFolder(run).summary()
        RunFolder(run).summary_file.write_text(json.dumps({**summary, "split_hash": "0123456789abcdef"}))
    with pytest.raises(ConfigError, match="different split files.*0123456789abcdef"):
        compare.compare(tiny_cv, other)
    relabelled = shutil.copytree(tiny_cv, tmp_path / "relabelled")
    oof = pd.read_csv(relabelled / "fold0" / "oof.csv")
    oof.loc[0, "label"] = (oof.loc[0, "label"] + 1) % 18
    oof.to_csv(relabelled / "fold0" / "oof.csv", index=False)
    with pytest.raises(ConfigError, match=f"'{tiny_cv}' and '{relabelled}' were validated on different labels"):
        compare.compare(tiny_cv, relabelled)


@pytest.mark.slow
def test_cv_seeds_make_one_experiment_whose_oof_averages_them(synth_root, tmp_path):
    from baseline.runfolder import Experiment
    from tests.conftest import tiny_overrides

    over = tiny_overrides(synth_root, tmp_path / "runs", **{"run.name": "s", "split.folds": 2, "cv.seeds": "[3,4]"})
    assert main(["cv", *over]) == 0
    exp = Experiment(tmp_path / "runs" / "s")
    assert [e.path.name for e in exp.seeds()] == ["seed3", "seed4"] and len(exp.fold_runs()) == 4
    assert all(load_config(exp.seed(s).fold(k).config).seed == s for s in (3, 4) for k in (0, 1))
    seeds = [pd.read_csv(exp.seed(s).oof).sort_values("image").reset_index(drop=True) for s in (3, 4)]
    joined = pd.read_csv(exp.oof).sort_values("image").reset_index(drop=True)
    cols = [f"p{k}" for k in range(18)]
    np.testing.assert_allclose(joined[cols], (seeds[0][cols] + seeds[1][cols]) / 2, atol=1e-6)
    assert not seeds[0][cols].equals(seeds[1][cols])  # two seeds, two models
    cv = exp.cv()
    assert cv["seeds"] == [3, 4] and [r["seed"] for r in cv["per_seed"]] == [3, 4]
    assert cv["oof_f1_seed_mean"] == pytest.approx(np.mean([exp.seed(s).cv()["oof_f1"] for s in (3, 4)]))
    c = compare.compare(exp.seed(3).path, exp.path)  # one seed against both: same split, same labels
    assert c.people == 30 and c.low <= c.difference <= c.high
    book = tmp_path / "ledger.csv"
    assert main(["submit", *over, f"submit.checkpoints=[{exp.path}]", f"submit.out={tmp_path / 'sub.csv'}",
                 f"submit.ledger={book}"]) == 0
    members = pd.read_csv(book, dtype=str)["members"].iloc[0].split(";")
    assert len(members) == 4  # every seed's every fold predicts
