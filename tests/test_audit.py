"""`baseline data audit`: wrong labels written into a contest-like set are found from out-of-fold
predictions (cleanlab), reported per person and field, and offered as a data.corrections file."""

import pandas as pd
import pytest

from baseline.cli import main
from baseline.config import load_config
from baseline.data.layouts import read_table
from baseline.data.synth import inject_label_errors, write_synth
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_audit_finds_the_injected_wrong_labels_and_writes_corrections(tmp_path, capsys):
    root = write_synth(tmp_path / "data", people=60, seed=1)
    injected = inject_label_errors(root, share=0.1, seed=1)  # 6 people: gender or age bucket wrong
    over = tiny_overrides(root, tmp_path / "runs", **{"run.name": "exp", "data.img_size": 48, "train.epochs": 10})
    assert main(["cv", *over]) == 0
    fix = tmp_path / "fix.csv"
    assert main(["data", "audit", str(tmp_path / "runs" / "exp"), *over, "--corrections", str(fix)]) == 0
    found = pd.read_csv(tmp_path / "runs" / "exp" / "label_issues.csv", dtype={"id": str})
    assert (tmp_path / "runs" / "exp" / "label_issues.png").is_file()
    flagged, wrong = set(found["id"]), set(injected["id"])
    recall, precision = len(flagged & wrong) / len(wrong), len(flagged & wrong) / max(len(flagged), 1)
    assert recall >= 0.8 and precision >= 0.5, (found, injected)
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


def test_audit_needs_an_experiment_with_oof(tmp_path, capsys, synth_root):
    assert main(["data", "audit", f"data.root={synth_root}"]) == 2
    assert main(["data", "audit", str(tmp_path), f"data.root={synth_root}"]) == 2
    err = capsys.readouterr().err
    assert "name the experiment folder" in err and "no oof.csv" in err and "Traceback" not in err
