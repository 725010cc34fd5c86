"""The pictures: data report, run figures, runs --compare, and TensorBoard event files."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from baseline import plots
from baseline.cli import main
from baseline.config import load_config
from baseline.data import check
from baseline.data.layouts import read_table
from tests.conftest import tiny_overrides

RUN_PICTURES = ("learning_curves.png", "confusion_matrix.png", "per_class_f1.png", "worst_predictions.png")


def assert_picture(path, min_side=150, max_side=4000):
    with Image.open(path) as im:
        im.load()
        assert min_side <= im.width <= max_side and min_side <= im.height <= max_side, (path, im.size)


def colour_images(root, n=6, seed=0):
    """Solid red or blue images with noise: (path, label) rows, label 0 red, 1 blue."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, rgb in enumerate([(220, 30, 30), (30, 30, 220)]):
        for i in range(n):
            px = np.clip(np.array(rgb) + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            p = root / f"{label}_{i}.png"
            Image.fromarray(px).save(p)
            rows.append((str(p), label))
    return rows


def oof_frame(rows, probs):
    df = pd.DataFrame({"path": [p for p, _ in rows], "label": [y for _, y in rows], "pred": probs.argmax(1)})
    return pd.concat([df, pd.DataFrame(probs, columns=[f"p{i}" for i in range(probs.shape[1])])], axis=1)


def test_worst_predictions_puts_the_confident_mistake_first_and_follows_the_data(tmp_path):
    rows = colour_images(tmp_path)
    probs = np.array([[0.9, 0.1] if y == 0 else [0.2, 0.8] for _, y in rows])
    probs[3] = [0.02, 0.98]  # a red image the model calls blue with confidence
    probs[8] = [0.45, 0.55]  # a blue image, barely right
    first = plots.worst_predictions(oof_frame(rows, probs), ["red", "blue"], tmp_path / "w1.png")
    assert first[0] == rows[3][0] and first[1] == rows[8][0]
    assert_picture(tmp_path / "w1.png")
    probs[3], probs[10] = [0.9, 0.1], [0.99, 0.01]  # now a blue image is the worst
    second = plots.worst_predictions(oof_frame(rows, probs), ["red", "blue"], tmp_path / "w2.png")
    assert second[0] == rows[10][0]
    assert (tmp_path / "w1.png").read_bytes() != (tmp_path / "w2.png").read_bytes()


def test_per_class_f1_values_and_picture(tmp_path):
    y = np.array([0, 0, 1, 1, 2, 2])
    f1 = plots.per_class_f1(y, np.array([0, 0, 1, 0, 2, 2]), ["a", "b", "c"], tmp_path / "f.png")
    assert f1 == pytest.approx([0.8, 2 / 3, 1.0])
    assert_picture(tmp_path / "f.png")
    plots.per_class_f1(y, y, ["a", "b", "c"], tmp_path / "g.png")
    assert (tmp_path / "f.png").read_bytes() != (tmp_path / "g.png").read_bytes()


def test_data_check_writes_the_report_and_flags_bad_images(synth_root, tmp_path, capsys):
    root = tmp_path / "d"
    shutil.copytree(synth_root, root)
    people = sorted((root / "train" / "images").iterdir())
    jpg = next(people[0].glob("mask1.*"))
    jpg.write_bytes(b"not an image")  # unreadable
    shutil.copy(next(people[1].glob("mask2.*")), next(people[1].glob("mask3.*")))  # identical content
    wide = next(people[2].glob("normal.*"))
    Image.new("RGB", (300, 100), (0, 128, 0)).save(wide, format="JPEG" if wide.suffix != ".png" else "PNG")
    cfg = load_config(None, [f"data.root={root}", "split.folds=3"])
    assert check.check(cfg) == 1  # the unreadable file
    out = capsys.readouterr().out
    report = root / "report"
    assert f"pictures in {report}/" in out
    for name in ("class_counts.png", "samples.png", "image_sizes.png", "flagged.png"):
        assert_picture(report / name)
    flagged = check.check_images(read_table(cfg).df, lambda *_: None)[1]
    assert {why for _, why in flagged} >= {"unreadable", "identical #1"}
    paths = [str(wide)] + [str(next(p.glob("normal.*"))) for p in people[3:8]]
    assert check.odd_sizes(paths, check.image_sizes(paths)) == [(str(wide), "odd aspect 300x100")]


def test_data_check_report_shows_the_folds_once_a_split_exists(synth_root, tmp_path):
    root = tmp_path / "d"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns("splits"))  # other tests split the shared copy
    over = [f"data.root={root}", "split.folds=3", f"check.out={tmp_path / 'r1'}"]
    assert main(["data", "check", *over]) == 0
    assert main(["data", "split", *over]) == 0
    assert main(["data", "check", *over[:-1], f"check.out={tmp_path / 'r2'}"]) == 0
    with Image.open(tmp_path / "r1" / "class_counts.png") as a, Image.open(tmp_path / "r2" / "class_counts.png") as b:
        assert b.height > a.height  # the per-fold panel


def fake_run(folder, classes, labels, preds):
    folder.mkdir(parents=True)
    (folder / "classes.json").write_text(pd.Series(classes).to_json(orient="values"))
    pd.DataFrame({"path": ["x"] * len(labels), "label": labels, "pred": preds}).to_csv(folder / "oof.csv", index=False)


def test_runs_compare_draws_per_class_f1_of_two_runs(tmp_path, capsys):
    fake_run(tmp_path / "a", ["cat", "dog"], [0, 0, 1, 1], [0, 0, 1, 1])
    fake_run(tmp_path / "b", ["cat", "dog"], [0, 0, 1, 1], [0, 1, 1, 1])
    assert main(["runs", "--compare", "a", "b", f"run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert_picture(tmp_path / "compare_a_vs_b.png")
    assert "0.800" in out and "0.667" in out  # b's dog and cat F1
    fake_run(tmp_path / "c", ["cat", "dog", "eel"], [0, 1, 2], [0, 1, 2])
    assert main(["runs", "--compare", "a", "c", f"run.dir={tmp_path}"]) == 2
    assert main(["runs", "--compare", "a", "nope", f"run.dir={tmp_path}"]) == 2


@pytest.mark.slow
def test_run_writes_every_picture_and_tensorboard_events(tmp_path):
    """Red and blue images in the folder layout, one red image filed under blue on purpose: after a
    short run, that image leads the worst predictions; TensorBoard holds the scalars and pictures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = tmp_path / "colours"
    for name in ("red", "blue"):
        (root / name).mkdir(parents=True)
    rows = colour_images(tmp_path, n=30)
    for p, y in rows:
        shutil.move(p, root / ("red" if y == 0 else "blue") / f"{y}_{p.split('_')[-1]}")
    wrong = root / "blue" / "mislabeled.png"
    shutil.move(root / "red" / "0_0.png", wrong)
    over = tiny_overrides(root, tmp_path / "runs", **{"data.format": "folder", "run.name": "c", "train.epochs": 4,
                                                       "split.folds": 3, "log.tensorboard": "true", "log.figures": True,
                                                       "train.batch_size": 8})
    assert main(["data", "split", *over]) == 0
    split = pd.read_csv(next((root / "splits").glob("*.csv")))
    fold = int(split.loc[split["path"].str.endswith("mislabeled.png"), "fold"].iloc[0])
    assert main(["train", *over, f"split.fold={fold}"]) == 0
    run = tmp_path / "runs" / "c"
    for name in RUN_PICTURES:
        assert_picture(run / name)
    oof = pd.read_csv(run / "oof.csv")
    assert oof["path"].iloc[plots.worst_order(oof)[0]].endswith("mislabeled.png")
    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run / "tb")).Reload()
    tags = acc.Tags()
    assert {"train/loss", "val_f1", "val_loss", "lr", "images_per_s", "train_loss"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("val_f1")] == sorted({e.step for e in acc.Scalars("val_f1")})
    assert len(acc.Scalars("val_f1")) == 4
    assert {"confusion_matrix", "worst_predictions", "per_class_f1"} <= set(tags["images"])
