"""data.crop: the face box on a real photo (scikit-image's astronaut) and on a 384x512 contest-layout set
whose true face boxes are known, the centre fall-back, the detection cache, and training and submitting
on crops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from baseline.data import crops
from baseline.data import dataset as ds
from baseline.data.contest import write_contest


def iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h)


@pytest.fixture(scope="module")
def contest(tmp_path_factory):
    return write_contest(tmp_path_factory.mktemp("contest"), "contest_a", people=12, seed=0)


def test_the_face_box_covers_the_astronauts_face(tmp_path):
    from skimage import data

    p = tmp_path / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(p)
    box = crops.detect_face(str(p))
    # her face: eyes near (0.42, 0.23) and (0.48, 0.22) of the 512x512 photo, the chin near y 0.33
    assert box is not None and box[0] < 0.40 and box[2] > 0.50 and box[1] < 0.20 and box[3] > 0.30
    assert (box[2] - box[0]) * (box[3] - box[1]) < 0.06  # the face, not the photo
    grown = crops.grow(box, 0.4)
    assert grown[2] - grown[0] == pytest.approx((box[2] - box[0]) * 1.8)
    assert crops.grow((0.05, 0.1, 0.9, 0.95), 0.5) == (0.0, 0.0, 1.0, 1.0)  # kept inside the photo


def test_face_boxes_on_a_contest_layout_set_match_the_drawn_faces_and_the_rest_fall_back(contest, tmp_path, caplog,
                                                                                        monkeypatch):
    truth = pd.read_csv(contest / "faces.csv")
    paths = [str(contest / p) for p in truth["path"]]
    assert Image.open(paths[0]).size == (384, 512)
    caplog.set_level("INFO")
    boxes = crops.boxes_for("face", 0.0, paths, tmp_path / "cache")
    found = [(boxes[p], tuple(t)) for p, *t in zip(paths, truth.x0, truth.y0, truth.x1, truth.y1)
             if boxes[p] != crops.CENTER]
    assert 0.1 < len(found) / len(paths) < 1.0  # masks hide the mouth: some fall back, not all
    assert np.mean([iou(b, t) > 0.5 for b, t in found]) >= 0.9, found
    assert f"a face in {len(found)} of {len(paths)} images" in caplog.text
    # detected once: a second call (another margin) reads the kept boxes
    monkeypatch.setattr(crops, "detect_face", lambda *a: pytest.fail("detected again"))
    again = crops.boxes_for("face", 0.4, paths, tmp_path / "cache")
    assert crops.boxes_for("face", 0.0, paths[::3], tmp_path / "cache") == {p: boxes[p] for p in paths[::3]}
    assert sum(b != crops.CENTER for b in again.values()) == len(found)
    assert all(np.allclose(again[p], crops.grow(boxes[p], 0.4), atol=1e-3) for p in paths if boxes[p] != crops.CENTER)
    assert crops.boxes_for("center", 0.4, paths, None) == dict.fromkeys(paths, crops.CENTER)
    assert crops.boxes_for("none", 0.4, paths, None) is None


def test_a_crop_box_decodes_that_part_only(contest):
    p = str(next((contest / "eval" / "images").iterdir()))
    box = (0.25, 0.5, 0.75, 1.0)
    part = Image.open(p).convert("RGB").crop((96, 256, 288, 512)).resize((16, 24), Image.BILINEAR, reducing_gap=2.0)
    assert np.array_equal(ds.decode(p, (24, 16), box=box), np.asarray(part))
    assert not np.array_equal(ds.decode(p, (24, 16), box=box), ds.decode(p, (24, 16)))
    paths = [p]
    assert ds.cache_key(paths, (8, 8), boxes={p: box}) != ds.cache_key(paths, (8, 8))  # a crop is another cache


@pytest.mark.slow
def test_train_check_and_submit_on_face_crops(contest, tmp_path, capsys):
    from baseline.cli import main
    from tests.conftest import tiny_overrides

    over = tiny_overrides(contest, tmp_path / "runs", **{"run.name": "crop", "data.crop": "face",
                                                        "data.num_workers": 0})
    assert main(["data", "check", *over, f"check.out={tmp_path / 'report'}"]) == 0
    said = capsys.readouterr().out
    assert "data.crop=face:" in said and (tmp_path / "report" / "crops.png").is_file()
    assert main(["train", *over]) == 0
    out = tmp_path / "sub.csv"
    assert main(["submit", *over, f"submit.out={out}"]) == 0
    sub = pd.read_csv(out)
    assert sub.ImageID.tolist() == pd.read_csv(contest / "eval" / "info.csv").ImageID.tolist()
    kept = list((contest / ".cache").glob("faces-*.csv"))
    assert len(kept) == 1 and len(pd.read_csv(kept[0])) == 84 + 56  # every training and test image, once
    # people are grouped on whole photos: a cropping member's embeddings are of the uncropped images
    import torch

    from baseline import dist, engine
    from baseline.config import load_config
    from baseline.data.layouts import read_test_table
    from baseline.runfolder import RunFolder
    from baseline.submit import predict

    cfg = load_config(None, over)
    test, env, best = read_test_table(cfg), dist.Env(), RunFolder(tmp_path / "runs" / "crop").best
    emb = predict.member_outputs(cfg, test, best, env, {})[2]
    model, mcfg, _ = predict.load_model(best, torch.device("cpu"))
    mean, std, interp = predict.norm_of(mcfg, model)
    ctx = engine.StepCtx(env, torch.tensor(mean), torch.tensor(std))
    how = ((32, 32), interp)
    whole = predict.view(cfg, test, env, model, ctx, (*how, predict.WHOLE), {}, "m", False, embed=True)[1]
    cropped = predict.view(cfg, test, env, model, ctx, (*how, ("face", 0.4)), {}, "m", False, embed=True)[1]
    assert np.allclose(emb, whole.numpy(), atol=1e-5) and not np.allclose(emb, cropped.numpy(), atol=1e-3)
