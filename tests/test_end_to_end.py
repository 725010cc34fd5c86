"""train -> run folder -> submit, through the real CLI entry point, on tiny settings."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from baseline.cli import main
from baseline.config import get, load_config, walk
from baseline.config.schema import DECIDED_AT_SUBMIT
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_train_then_submit(synth_root, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)  # submissions/ledger.csv is relative
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "e2e", "train.epochs": 2, "train.batch_size": "auto",
                                                "data.num_workers": "auto", "log.wandb.mode": "auto",
                                                "submit.person_vote": "off"})  # the model's own answers (test_people)
    assert main(["train", *over]) == 0
    run = runs / "e2e"
    saved = load_config(run / "config.yaml")
    unresolved = [k for k, _, _ in walk() if get(saved, k) in ("auto", "data") and k not in DECIDED_AT_SUBMIT]
    assert unresolved == []  # every default resolved, saved (a submission decides its own)
    assert saved.train.batch_size == json.loads((run / "summary.json").read_text())["batch_size_per_process"]
    for f in ("config.yaml", "metrics.csv", "summary.json", "oof.csv", "train.log",
              "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (run / f).is_file(), f
    summary = json.loads((run / "summary.json").read_text())
    for k in ("best_metric", "metric_name", "best_epoch", "val_f1", "val_acc", "epochs_done"):
        assert k in summary
    assert summary["epochs_done"] == 2 and summary["metric_name"] == "val_f1"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics.epoch.tolist() == [1, 2]
    assert summary["best_metric"] == pytest.approx(metrics.val_f1.max())
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert ckpt["config"]["model"]["name"] == "test_resnet" and len(ckpt["classes"]) == 18
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert ckpt["config"]["train"]["channels_last"] is True  # auto, resolved: a conv net on the CPU
    from baseline.submit.predict import load_model

    model = load_model(run / "checkpoints" / "best.pt", torch.device("cpu"))[0]  # predicts in that layout
    assert next(p for p in model.parameters() if p.dim() == 4).is_contiguous(memory_format=torch.channels_last)
    oof = pd.read_csv(run / "oof.csv")
    assert len(oof) == len(set(oof.path)) > 0

    out = tmp_path / "sub.csv"
    assert main(["submit", *over, f"submit.out={out}", "submit.tta=true"]) == 0
    sub = pd.read_csv(out)
    info = pd.read_csv(synth_root / "eval" / "info.csv")
    truth = pd.read_csv(synth_root / "eval" / "truth.csv")
    assert list(sub.columns) == ["ImageID", "ans"]
    assert sub.ImageID.tolist() == info.ImageID.tolist()
    assert sub.ans.between(0, 17).all() and sub.ans.dtype.kind == "i"
    assert truth.ImageID.tolist() == sub.ImageID.tolist()
    # the member's test probabilities are kept: the same submit again predicts nothing, a new view does
    cached = [p for p in (run / "test_probs").glob("best-*.npy") if p.suffixes == [".npy"]]
    assert len(cached) == 1 and cached[0].with_suffix(".people.npy").is_file()  # and its embeddings
    assert (np.load(cached[0]).argmax(1) == sub.ans.to_numpy()).all()  # the model's answers, in ImageID order
    again = tmp_path / "again.csv"
    caplog.clear()
    assert main(["submit", *over, f"submit.out={again}", "submit.tta=true"]) == 0
    assert again.read_text() == out.read_text() and "from test_probs/" in caplog.text
    assert "predicted 49 images with" not in caplog.text
    assert main(["submit", *over, f"submit.out={tmp_path / 'scales.csv'}", "submit.tta_scales=[0.75,1.25]"]) == 0
    assert len([p for p in (run / "test_probs").glob("best-*.npy") if p.suffixes == [".npy"]]) == 2
    book = pd.read_csv(tmp_path / "submissions" / "ledger.csv")  # one ledger, wherever submit.out wrote
    assert book["file"].tolist()[0] == str(out) and book["members"].tolist() == ["e2e"] * 3
    # lb finds the submission in that same ledger by its path (was: "is not in submissions/ledger.csv")
    assert main(["lb", str(out), *over]) == 0
    scored = pd.read_csv(tmp_path / "submissions" / "ledger.csv")
    assert scored["lb"].iloc[0] == pytest.approx(f1_score(truth.ans, sub.ans, average="macro"), abs=1e-5)
    assert book["cv_f1"].iloc[0] == pytest.approx(f1_score(oof.label, oof.pred, average="macro"), abs=1e-4)
    assert book["tta"].tolist() == [True, True, False]


@pytest.mark.slow
def test_submit_defaults_to_the_newest_run_and_ensembles(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    for name in ("a", "b"):
        assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": name})]) == 0
    over = tiny_overrides(synth_root, runs)
    out = tmp_path / "newest.csv"
    assert main(["submit", *over, f"submit.out={out}"]) == 0
    ens = tmp_path / "ens.csv"
    assert main(["submit", *over, f"submit.out={ens}", f"submit.checkpoints=[{runs / 'a'},{runs / 'b'}]"]) == 0
    assert len(pd.read_csv(out)) == len(pd.read_csv(ens)) == 140  # 20 test people (2/3 of 30) x 7
    # weights fitted on the two runs' OOF (same split and fold), then used by submit
    assert main(["ensemble", str(runs / "a"), str(runs / "b"), "--name", "ab"]) == 0
    fitted = tmp_path / "fitted.csv"
    assert main(["submit", *over, f"submit.out={fitted}", f"submit.ensemble={tmp_path / 'ensembles' / 'ab.yaml'}"]) == 0
    book = pd.read_csv(tmp_path / "submissions" / "ledger.csv", dtype=str)
    row = book[book.file == str(fitted)].iloc[0]
    weights = [float(w) for w in row.weights.split(";")]
    spec = yaml.safe_load((tmp_path / "ensembles" / "ab.yaml").read_text())
    used = [Path(m["path"]).name for m in spec["members"] if m["weight"] > 0]  # weight 0: not predicted at all
    assert row.members == ";".join(used) and sum(weights) == pytest.approx(1.0, abs=1e-3)
    assert len(pd.read_csv(fitted)) == 140
    # the README's day-6 line, without data.root, where another built-in data set sits at the default root:
    # the test images of the data the members trained on, not those of data/synth
    from baseline.data.synth import write_synth

    write_synth(tmp_path / "data" / "synth", people=12, seed=5)
    day6 = tmp_path / "day6.csv"
    assert main(["submit", f"submit.out={day6}", f"submit.ensemble={tmp_path / 'ensembles' / 'ab.yaml'}"]) == 0
    assert pd.read_csv(day6)["ImageID"].tolist() == pd.read_csv(synth_root / "eval" / "info.csv")["ImageID"].tolist()


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "baseline", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.slow
def test_python_dash_m_and_console_script_agree(tmp_path):
    script = Path(sys.executable).with_name("baseline")  # what `pip install` put beside this interpreter
    assert script.is_file(), f"the console script is not installed at {script}"
    for cmd in ([sys.executable, "-m", "baseline"], [str(script)]):
        r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and all(c in r.stdout for c in ("train", "submit", "data", "sweep", "lb")), r
        bad = subprocess.run([*cmd, "train", "optim.lr=-1", f"run.dir={tmp_path}"], capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode == 2 and bad.stderr.count("error:") == 1 and "Traceback" not in bad.stderr, bad


@pytest.mark.slow
def test_run_folder_lists_classes_and_corrections(synth_root, tmp_path):
    people = pd.read_csv(synth_root / "train" / "train.csv", dtype=str)
    fix = tmp_path / "fix.csv"
    fix.write_text(f"id,field,value\n{people.id[0]},age,61\n")
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "c", "data.corrections": fix})]) == 0
    assert json.loads((runs / "c" / "classes.json").read_text())[0] == "wear/male/<30"
    applied = pd.read_csv(runs / "c" / "corrections_applied.csv", dtype=str)
    assert applied.id.tolist() == [people.id[0]] and applied.new.tolist() == ["61"]


@pytest.mark.slow
def test_csv_layout_train_submit_and_unknown_test_label(tmp_path):
    from PIL import Image

    root = tmp_path / "csvdata"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(48):
        colour = ["red", "green", "blue"][i % 3]
        img = Image.new("RGB", (20, 20), {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}[colour])
        img.putpixel((i % 20, i // 20), (i, i, i))  # no two files identical: that would be leakage
        img.save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{colour}")
    (root / "train.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    (root / "test.csv").write_text("image\nimg/0.png\nimg/1.png\nimg/2.png\n")
    runs = tmp_path / "runs"
    over = tiny_overrides(root, runs, **{"data.format": "csv", "data.train_csv": "train.csv",
                                         "data.test_csv": "test.csv",
                                         "run.name": "csv", "train.batch_size": 8})
    assert main(["train", *over, "train.epochs=3"]) == 0
    out = tmp_path / "csv_sub.csv"
    assert main(["submit", *over, f"submit.out={out}"]) == 0
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["image", "label"] and sub.label.isin(["red", "green", "blue"]).all()
    (root / "test.csv").write_text("image,label\nimg/0.png,red\nimg/1.png,purple\n")
    r = run_cli("submit", *over, f"submit.out={tmp_path / 'x.csv'}")
    assert r.returncode == 2 and "row 3: label 'purple'" in r.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_factorized_head_trains_and_submits_like_any_model(tiny, tmp_path):
    over = tiny(**{"model.head": "factorized", "run.name": "fact"})
    assert main(["train", *over]) == 0
    oof = pd.read_csv(tmp_path / "runs" / "fact" / "oof.csv")
    probs = oof[[f"p{i}" for i in range(18)]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-4)  # the product of the three heads is a distribution
    out = tmp_path / "fact.csv"
    assert main(["submit", *over, f"submit.checkpoints=[{tmp_path / 'runs' / 'fact'}]", f"submit.out={out}"]) == 0
    assert pd.read_csv(out).ans.between(0, 17).all()
