import csv
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from baseline.data.dataset import decode
from baseline.data.layouts import MASK_CLASSES, DataError, read_table, read_test_table
from baseline.data.synth import write_synth
from tests.conftest import cfg_for


@pytest.fixture
def mask_root(synth_copy):
    return synth_copy


def rewrite_csv(path, fn):
    rows = list(csv.reader(open(path)))
    rows = fn(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_mask_labels_follow_the_formula(mask_root):
    t = read_table(cfg_for(mask_root))
    assert len(t.df) == 30 * 7 and t.classes == MASK_CLASSES
    for r in t.df.itertuples():
        bucket = 0 if r.age < 30 else (1 if r.age < 60 else 2)
        assert r.label == r.mask * 6 + r.gender * 3 + bucket
    assert set(t.df["stem"]) == {"mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"}
    assert (t.df[t.df.stem == "normal"]["mask"] == 2).all()
    assert (t.df[t.df.stem == "incorrect_mask"]["mask"] == 1).all()


def test_hidden_files_and_mixed_extensions(mask_root):
    folder = next((mask_root / "train" / "images").iterdir())
    (folder / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")
    (folder / "mask3.jpg").rename(folder / "mask3.PNG")  # upper-case extension
    t = read_table(cfg_for(mask_root))
    mine = t.df[t.df.path.str.contains(folder.name)]
    assert len(mine) == 7
    assert not mine.path.str.contains("/._").any()


def test_missing_and_extra_images_warn_with_folder(mask_root, caplog):
    folder = next((mask_root / "train" / "images").iterdir())
    (folder / "normal.jpg").unlink(missing_ok=True)
    (folder / "normal.png").unlink(missing_ok=True)
    (folder / "normal.jpeg").unlink(missing_ok=True)
    shutil.copy(next(folder.glob("mask1.*")), folder / "selfie.jpg")
    with caplog.at_level(logging.WARNING):
        t = read_table(cfg_for(mask_root))
    assert len(t.df) == 30 * 7 - 1
    assert folder.name in caplog.text and "normal" in caplog.text and "selfie.jpg" in caplog.text


def test_folder_without_any_stem_is_an_error(mask_root):
    folder = next((mask_root / "train" / "images").iterdir())
    for f in folder.iterdir():
        f.rename(folder / f"x_{f.name}")
    with pytest.raises(DataError, match=folder.name):
        read_table(cfg_for(mask_root))


def test_upper_case_gender_is_accepted(mask_root):
    rewrite_csv(mask_root / "train" / "train.csv",
                lambda rows: [rows[0]] + [[r[0], r[1].upper(), *r[2:]] for r in rows[1:]])
    t = read_table(cfg_for(mask_root))
    assert len(t.df) == 30 * 7


@pytest.mark.parametrize("edit, message", [
    (lambda rows: [[c for c in r if c != "age"][:3] for r in rows], "lacks column"),
    (lambda rows: rows[:1] + [[rows[1][0], "robot", *rows[1][2:]]] + rows[2:], "row 2: gender 'robot'"),
    (lambda rows: rows[:1] + [[*rows[1][:3], "old", rows[1][4]]] + rows[2:], "row 2: age 'old'"),
    (lambda rows: rows[:1] + [[*rows[1][:4], "not-a-person-folder"]] + rows[2:], "does not parse"),
    (lambda rows: rows[:1] + [[*rows[1][:4], f"999999_{rows[1][1]}_Asian_{rows[1][3]}"]] + rows[2:], "does not exist"),
    (lambda rows: rows[:1] + [[*rows[1][:3], "250", rows[1][4]]] + rows[2:], "row 2: age 250 is outside"),
    (lambda rows: rows[:1] + [[*rows[1][:3], "-5", rows[1][4]]] + rows[2:], "row 2: age -5 is outside"),
    (lambda rows: rows[:1] + [[rows[1][0], "female" if rows[1][1] == "male" else "male", *rows[1][2:]]] + rows[2:],
     "row 2: the row says .* but its folder"),
    (lambda rows: rows + [rows[1]], "rows 2 and .*: id .* is listed twice"),
])
def test_bad_train_csv_names_the_problem(mask_root, edit, message):
    rewrite_csv(mask_root / "train" / "train.csv", edit)
    with pytest.raises(DataError, match=message):
        read_table(cfg_for(mask_root))


def test_missing_root_says_how_to_make_data(tmp_path):
    with pytest.raises(DataError, match="data.root .* does not exist.*baseline data synth"):
        read_table(cfg_for(tmp_path / "nowhere"))


def test_test_table_follows_template(mask_root):
    t = read_test_table(cfg_for(mask_root))
    info = list(csv.reader(open(mask_root / "eval" / "info.csv")))[1:]
    assert t.df["id"].tolist() == [r[0] for r in info]
    assert list(t.template.columns) == ["ImageID", "ans"]


def test_corrections_are_applied_before_labelling(mask_root, tmp_path):
    t0 = read_table(cfg_for(mask_root))
    pid = t0.df.group.iloc[0]
    old = t0.df[t0.df.group == pid].gender.iloc[0]
    fix = tmp_path / "fix.csv"
    fix.write_text(f"id,field,value\n{pid},gender,{'male' if old == 1 else 'female'}\n{pid},age,65\n")
    t = read_table(cfg_for(mask_root, **{"data.corrections": fix}))
    mine = t.df[t.df.group == pid]
    assert (mine.gender == 1 - old).all() and (mine.age == 65).all()
    assert t.df.attrs["corrections"][0]["id"] == pid


# ---------------------------------------------------------------- image decoding quirks
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "CMYK"])
def test_any_png_mode_decodes_to_rgb(tmp_path, mode):
    p = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new("RGB", (20, 10), (200, 30, 40)).convert(mode).save(p)
    arr = decode(str(p), (8, 16))
    assert arr.shape == (8, 16, 3) and arr.dtype == np.uint8


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "r.jpg"
    img.save(p, exif=exif, quality=95)
    arr = decode(str(p), (40, 20))  # displayed upright it is 20 wide, 40 high
    assert arr[:20].mean() > 200 and arr[20:].mean() < 50


def test_unreadable_image_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.jpg"):
        decode(str(p), (8, 8))


# ---------------------------------------------------------------- CSV and folder layouts
def make_images(root, names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 12), (len(n) * 10 % 255, 0, 0)).save(root / n)


def test_csv_layout_with_string_labels(tmp_path):
    make_images(tmp_path, [f"img/{i}.png" for i in range(6)])
    (tmp_path / "train.csv").write_text("image,label,who\n" + "".join(
        f"img/{i}.png,{['cat', 'dog', 'ant'][i % 3]},p{i // 2}\n" for i in range(6)))
    (tmp_path / "test.csv").write_text("image\nimg/0.png\nimg/5.png\n")
    cfg = cfg_for(tmp_path, **{"data.format": "csv", "data.train_csv": "train.csv", "data.group_col": "who",
                               "data.test_csv": "test.csv"})
    t = read_table(cfg)
    assert t.classes == ["ant", "cat", "dog"]
    assert t.df.label.tolist() == [1, 2, 0, 1, 2, 0]
    assert t.df.group.tolist() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    test = read_test_table(cfg)
    assert test.df.id.tolist() == ["img/0.png", "img/5.png"]


def test_csv_layout_integer_labels_sort_numerically(tmp_path):
    make_images(tmp_path, [f"{i}.png" for i in range(4)])
    (tmp_path / "t.csv").write_text("image,label\n0.png,10\n1.png,2\n2.png,02\n3.png,1\n")
    t = read_table(cfg_for(tmp_path, **{"data.format": "csv", "data.train_csv": "t.csv"}))
    assert t.classes == ["1", "2", "10"]
    assert t.df.label.tolist() == [2, 1, 1, 0]


def test_csv_layout_missing_column_and_missing_image(tmp_path):
    make_images(tmp_path, ["a.png"])
    (tmp_path / "t.csv").write_text("file,label\na.png,x\n")
    with pytest.raises(DataError, match="lacks column.*'image'"):
        read_table(cfg_for(tmp_path, **{"data.format": "csv", "data.train_csv": "t.csv"}))
    (tmp_path / "t.csv").write_text("image,label\na.png,x\nb.png,y\n")
    with pytest.raises(DataError, match="b.png"):
        read_table(cfg_for(tmp_path, **{"data.format": "csv", "data.train_csv": "t.csv"}))


def test_folder_layout(tmp_path):
    make_images(tmp_path, ["cat/1.jpg", "cat/2.png", "dog/a.jpg", "dog/.hidden.jpg", "test/q.jpg", "test/r.jpg"])
    cfg = cfg_for(tmp_path, **{"data.format": "folder"})
    t = read_table(cfg)
    assert t.classes == ["cat", "dog"] and t.df.label.tolist() == [0, 0, 1]
    assert read_test_table(cfg).df.id.tolist() == ["q.jpg", "r.jpg"]


def test_synth_is_deterministic_and_scales(tmp_path):
    a = write_synth(tmp_path / "a", people=2, seed=5)
    b = write_synth(tmp_path / "b", people=2, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    big = write_synth(tmp_path / "c", people=1, seed=5, scale=4)
    assert Image.open(next((big / "eval" / "images").iterdir())).size == (384, 512)
