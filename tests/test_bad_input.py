"""Every week-one mistake ends in one `error:` line, exit 2, no traceback, and nothing new or changed
under runs/ or submissions/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from baseline.cli import main
from baseline.data.suite import write_digits_csv
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """A finished tiny run on the mask data and one on a 10-class csv data set."""
    base = tmp_path_factory.mktemp("trained")
    runs = base / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "mask"})]) == 0
    digits = base / "digits"
    write_digits_csv(digits, 15)
    over = tiny_overrides(digits, runs, **{"run.name": "digits", "data.format": "csv", "data.train_csv": "train.csv"})
    assert main(["train", *over]) == 0
    return runs


@pytest.fixture
def data(synth_root, tmp_path):
    """A private copy of the small mask data set, free to break."""
    root = tmp_path / "data"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("splits", ".cache"))
    return root


def edit_train_csv(root: Path, fn) -> None:
    csv = root / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    fn(df).to_csv(csv, index=False)


def first_image(root: Path) -> Path:
    return sorted((root / "train" / "images").glob("*/*"))[0]


def set_row(i, col, value):
    def fn(df):
        df.loc[i, col] = value
        return df
    return fn


def flip_gender(df):
    df.loc[0, "gender"] = "female" if df.loc[0, "gender"] == "male" else "male"
    return df


def csv_data(tmp_path: Path, rows: list[tuple[str, str]], test: list[str] | None = None) -> Path:
    root = tmp_path / "csvdata"
    (root / "img").mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(root / "img" / f"{i}.png")
    pd.DataFrame(rows, columns=["image", "label"]).to_csv(root / "train.csv", index=False)
    if test is not None:
        pd.DataFrame({"image": test}).to_csv(root / "test.csv", index=False)
    return root


def good_csv_rows(n=12):
    return [(f"img/{i}.png", "cat" if i % 2 else "dog") for i in range(n)]


# Each case: (id, what it writes/changes, the CLI arguments, a phrase the error line must hold).
# `prep(data, tmp_path, trained)` returns the arguments after the command's own.
CASES = [
    ("unknown key", "train", lambda d, t, r: ["train.epochz=3"], "unknown config key 'train.epochz'"),
    ("wrong type", "train", lambda d, t, r: ["optim.lr=fast"], "'optim.lr'"),
    ("not one of the choices", "train", lambda d, t, r: ["train.amp=fp8"], "config key 'train.amp'"),
    ("img_size 0", "train", lambda d, t, r: ["data.img_size=0"], "'data.img_size'"),
    ("img_size 4", "train", lambda d, t, r: ["data.img_size=[64,4]"], "at least 8 pixels"),
    ("negative lr", "train", lambda d, t, r: ["optim.lr=-1"], "'optim.lr': expected more than 0"),
    ("batch 0", "train", lambda d, t, r: ["train.batch_size=0"], "'train.batch_size'"),
    ("probability 1.5", "train", lambda d, t, r: ["aug.hflip=1.5"], "'aug.hflip': expected a probability"),
    ("smoothing 1", "train", lambda d, t, r: ["train.label_smoothing=1.0"], "'train.label_smoothing'"),
    ("fold out of range", "train", lambda d, t, r: ["split.fold=9"], "'split.fold'"),
    ("run.name escapes run.dir", "train", lambda d, t, r: ["run.name=../../escape"], "'run.name': expected a folder"),
    ("run.name absolute", "train", lambda d, t, r: [f"run.name={t / 'abs'}"], "'run.name': expected a folder"),
    ("more folds than people", "train", lambda d, t, r: ["split.folds=50"], "only 30 group"),
    ("layer decay with lr_scale", "train", lambda d, t, r: [
        "optim.layer_decay=0.7", "freeze.schedule=[{epoch: 0, train: head}, {epoch: 1, train: all, lr_scale: 0.1}]"],
     "use one of them"),
    ("unknown model", "train", lambda d, t, r: ["model.name=resnet_18x"], "not a timm model"),
    ("missing weights file", "train", lambda d, t, r: ["model.pretrained=/nope/w.pth"], "is not a file"),
    ("missing config file", "train", lambda d, t, r: ["--config", str(t / "nope.yaml")], "does not exist"),
    ("missing data root", "train", lambda d, t, r: [f"data.root={t / 'nowhere'}"], "baseline data synth"),
    ("age 250", "train", lambda d, t, r: edit_train_csv(d, set_row(0, "age", "250")), "age 250 is outside 0..120"),
    ("age -5", "train", lambda d, t, r: edit_train_csv(d, set_row(0, "age", "-5")), "age -5 is outside"),
    ("gender robot", "train", lambda d, t, r: edit_train_csv(d, set_row(0, "gender", "robot")), "gender 'robot'"),
    ("folder disagrees", "train", lambda d, t, r: edit_train_csv(d, flip_gender), "but its folder"),
    ("repeated row", "train", lambda d, t, r: edit_train_csv(d, lambda df: pd.concat([df, df.iloc[:1]])),
     "is listed twice"),
    ("train.csv without gender", "train", lambda d, t, r: edit_train_csv(d, lambda df: df.drop(columns="gender")),
     r"lacks column\(s\) \['gender'\]"),
    ("unparsable folder", "train", lambda d, t, r: edit_train_csv(d, set_row(0, "path", "nobody")), "does not parse"),
    ("zero-byte image", "train", lambda d, t, r: first_image(d).write_bytes(b""), "could not be decoded"),
    ("truncated image", "train",
     lambda d, t, r: first_image(d).write_bytes(first_image(d).read_bytes()[:300]), "could not be decoded"),
    ("truncated image, disk cache", "train", lambda d, t, r: truncated_with_disk_cache(d), "could not be decoded"),
    ("1x1 image", "train", lambda d, t, r: Image.new("RGB", (1, 1)).save(first_image(d)), "is 1x1 pixels"),
    ("config file not UTF-8", "train", lambda d, t, r: latin1_config(t), "is not UTF-8 text .line 2"),
    ("huge image", "train", lambda d, t, r: ["data.max_pixels=5000"], "data.max_pixels=5000"),
    ("NaN label", "train", lambda d, t, r: csv_args(t, good_csv_rows()[:11] + [("img/11.png", "NaN")]),
     "reads as a missing value"),
    ("None label", "train", lambda d, t, r: csv_args(t, good_csv_rows()[:11] + [("img/11.png", "None")]),
     "reads as a missing value"),
    ("path outside root", "train", lambda d, t, r: csv_args(t, good_csv_rows()[:11] + [("../x.png", "cat")]),
     "outside data.root"),
    ("absolute path", "train", lambda d, t, r: csv_args(t, good_csv_rows()[:11] + [("/etc/hostname", "cat")]),
     "outside data.root"),
    ("csv repeated image", "train", lambda d, t, r: csv_args(t, good_csv_rows() + [("img/0.png", "dog")]),
     "is listed twice"),
    ("csv without label column", "train",
     lambda d, t, r: csv_args(t, good_csv_rows()) + ["data.label_col=klass"], "lacks column"),
    ("empty class folder", "train", lambda d, t, r: folder_args(t), "has no images"),
    ("resume: other img_size", "resume", lambda d, t, r: resume_args(r, "data.img_size=40"),
     "data.img_size: 32 -> 40"),
    ("resume: other model", "resume", lambda d, t, r: resume_args(r, "model.name=test_efficientnet"),
     "model.name: 'test_resnet' -> 'test_efficientnet'"),
    ("resume: other precision", "resume", lambda d, t, r: resume_args(r, "train.amp=bf16"),
     "precision: the checkpoint trained with amp off"),
    ("resume: other loss", "resume", lambda d, t, r: resume_args(r, "train.loss=focal"), "train.loss"),
    ("resume: missing file", "train", lambda d, t, r: [f"run.resume={t / 'nope.pt'}"], "is not a checkpoint file"),
    ("run folder locked", "resume", lambda d, t, r: locked_args(r), "is in use by pid"),
    ("malformed W&B key", "train", lambda d, t, r: wandb_args(), "WANDB_API_KEY is not usable"),
    ("submit: other classes", "submit", lambda d, t, r: [f"submit.checkpoints={r / 'digits'}"],
     "predicts 10 classes, the mask data"),
    ("submit: missing checkpoint", "submit", lambda d, t, r: [f"submit.checkpoints={t / 'none'}"],
     "neither a checkpoint file nor a run folder"),
    ("submit: output is a folder", "submit", lambda d, t, r: [f"submit.checkpoints={r / 'mask'}", f"submit.out={t}"],
     "cannot be written"),
    ("submit: a folder that cannot be made", "submit", lambda d, t, r: [f"submit.checkpoints={r / 'mask'}",
                                                                         "submit.out=/proc/nope/x.csv"],
     "cannot be written"),
    ("submit: duplicate ImageID", "submit", lambda d, t, r: dup_info(d, r), "ImageID .* is listed twice"),
]


def truncated_with_disk_cache(root):
    first_image(root).write_bytes(first_image(root).read_bytes()[:300])
    return ["data.cache=disk"]


def latin1_config(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  epochs: 1  # café\n".encode("latin-1"))
    return ["--config", str(path)]


def csv_args(tmp_path, rows):
    root = csv_data(tmp_path, rows)
    return [f"data.root={root}", "data.format=csv", "data.train_csv=train.csv", "split.folds=2"]


def folder_args(tmp_path):
    root = tmp_path / "folders"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "cat" / "a.png")
    return [f"data.root={root}", "data.format=folder"]


def resume_args(runs, change):
    return ["run.name=mask", "run.resume=auto", "train.epochs=2", change]


def locked_args(runs):
    (runs / "mask" / ".lock").write_text(f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}, "since": "now"}}')
    return ["run.name=mask", "run.resume=auto", "train.epochs=2"]


def wandb_args():
    os.environ["WANDB_API_KEY"] = "not-a-key"
    return ["log.wandb.mode=auto"]


def dup_info(root, runs):
    info = root / "eval" / "info.csv"
    df = pd.read_csv(info)
    pd.concat([df, df.iloc[:1]]).to_csv(info, index=False)
    return [f"submit.checkpoints={runs / 'mask'}"]


def snapshot(*folders: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders if f.exists()
            for p in f.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("name, kind, prep, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_touches_nothing(name, kind, prep, phrase, data, tmp_path, trained,
                                                         capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # submissions/ is relative
    monkeypatch.setenv("WANDB_API_KEY", "")  # recorded, so the key a case sets is gone after it
    monkeypatch.delenv("WANDB_API_KEY")
    runs = trained if kind != "train" else tmp_path / "runs"
    extra = prep(data, tmp_path, trained)
    extra = extra if isinstance(extra, list) else []  # a prep that only breaks files returns no arguments
    args = tiny_overrides(data, runs, **{"submit.out": str(tmp_path / "submissions" / "s.csv")}) + extra
    touched = (runs, tmp_path / "submissions", data / "splits", data / ".cache")  # a refusal leaves nothing behind
    before = snapshot(*touched)
    try:
        rc = main(["submit" if kind == "submit" else "train", *args])
        after = snapshot(*touched)
    finally:
        (trained / "mask" / ".lock").unlink(missing_ok=True)
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2, (out[-2000:], err[-2000:])
    assert len(errors) == 1 and "Traceback" not in out + err, err
    assert pd.Series(errors).str.contains(phrase).all(), errors[0]
    assert after == before


@pytest.mark.slow
@pytest.mark.parametrize("args", [  # what main() cannot show: the module entry point's own handling
    ["train", "optim.lr=-1"],
    ["submit", "submit.checkpoints=/nowhere"],
])
def test_through_the_real_entry_point_no_traceback(args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    r = subprocess.run([sys.executable, "-m", "baseline", *args, f"run.dir={tmp_path / 'runs'}"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("error:") == 1, r.stderr
    assert not (tmp_path / "runs").exists()


def test_digits_writer_makes_a_readable_csv(tmp_path):
    write_digits_csv(tmp_path, 100)
    df, test = pd.read_csv(tmp_path / "train.csv"), pd.read_csv(tmp_path / "test_labels.csv")
    assert len(df) == 12 and len(test) == 5 and np.asarray(Image.open(tmp_path / df.image[0])).shape == (8, 8)
    assert not set(df.image) & set(test.image)  # the labelled test part is other scans
