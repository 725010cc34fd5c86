"""Decode-once loading, cache modes, data check, and the benchmark's four ways."""

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from baseline.bench import speed as bench
from baseline.cli import main
from baseline.config import load_config
from baseline.data import dataset as ds
from baseline.data.layouts import DataError, read_table
from baseline.data.synth import write_synth
from tests.conftest import tiny_overrides


@pytest.fixture
def small(synth_copy):
    return synth_copy


def paths_of(root):
    return read_table(load_config(None, [f"data.root={root}"])).df.path.tolist()


def test_ram_and_disk_cache_equal_direct_decoding(small, tmp_path):
    paths = paths_of(small)
    ram = ds.build_cache(paths, (24, 20), "ram", tmp_path / "c", 1)
    disk = ds.build_cache(paths, (24, 20), "disk", tmp_path / "c", 1)
    assert isinstance(disk, np.memmap) and ram.shape == (len(paths), 24, 20, 3)
    assert np.array_equal(ram, disk)
    assert np.array_equal(ram[5], ds.decode(paths[5], (24, 20)))
    again = ds.build_cache(paths, (24, 20), "disk", tmp_path / "c", 1)  # reused, not rebuilt
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1 and np.array_equal(again, disk)
    auto_small = ds.build_cache(paths, (24, 20), "auto", tmp_path / "c2", 1.0)
    auto_big = ds.build_cache(paths, (24, 20), "auto", tmp_path / "c2", 1e-9)
    assert not isinstance(auto_small, np.memmap) and isinstance(auto_big, np.memmap)
    assert ds.build_cache(paths, (24, 20), "off", tmp_path / "c", 1) is None


def test_dataset_yields_uint8_chw_and_normalize_matches_reference(small):
    paths = paths_of(small)
    d = ds.ImageDataset(paths, [0] * len(paths), (16, 12))
    x, y = d[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 16, 12) and y == 0
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    got = ds.normalize(x[None], mean, std)
    ref = (x[None].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(got, ref)


def test_shard_sampler_covers_every_item_once():
    for n, world in ((10, 3), (7, 2), (1, 4)):
        seen = sorted(i for r in range(world) for i in ds.ShardSampler(n, r, world))
        assert seen == list(range(n))


def test_epoch_order_and_augmentation_are_a_function_of_seed_and_epoch(small):
    from baseline.config import AugCfg
    from baseline.data.transforms import train_transform

    paths = paths_of(small)
    d = ds.ImageDataset(paths, list(range(len(paths))), (16, 16), train_transform(AugCfg(), (16, 16)),
                        ds.build_cache(paths, (16, 16), "ram", None, 1))
    loader = ds.train_loader(d, 8, 0, seed=1, rank=0, world=1)

    def epoch(e):
        ds.set_epoch(loader, 1, e)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, c))


def test_data_check_lists_every_unreadable_image(small, capsys):
    paths = paths_of(small)
    for p in (paths[0], paths[9]):
        with open(p, "wb") as f:
            f.write(b"broken")
    rc = main(["data", "check", f"data.root={small}"])
    out = capsys.readouterr().out
    assert rc == 1
    assert paths[0] in out and paths[9] in out and "2 error(s)" in out
    assert "images per class" in out


def test_data_split_then_check_reports_folds(small, capsys):
    assert main(["data", "split", f"data.root={small}", "split.folds=3"]) == 0
    assert main(["data", "check", f"data.root={small}", "split.folds=3"]) == 0
    out = capsys.readouterr().out
    assert "fold 0:" in out and "fold 2:" in out and "0 error(s)" in out


@pytest.mark.slow
def test_bench_reports_three_ways(tmp_path):
    root = write_synth(tmp_path / "b", people=20, seed=0)
    cfg = load_config(None, tiny_overrides(root, tmp_path / "runs", **{"data.cache": "ram"}))
    r = bench.run(cfg, batches=3, rounds=1)
    for k in ("data_kit", "data_naive", "train_limit", "train_kit_step", "train_kit", "train_naive", "infer_kit",
              "infer_naive"):
        assert r[k] > 0
    assert r["data_kit"] > r["data_naive"]  # the cache skips decoding
    assert "kit step/limit" in bench.report(r) and "kit/limit" in bench.report(r)


@pytest.mark.slow
def test_the_bench_limit_is_a_plain_step_not_the_kits(tmp_path, monkeypatch):
    """A kit step made 50 ms slower slows the kit's rows, never the limit: the limit is a plain
    forward/backward/AdamW of its own."""
    from baseline import engine

    root = write_synth(tmp_path / "b", people=20, seed=0)
    cfg = load_config(None, tiny_overrides(root, tmp_path / "runs", **{"data.cache": "ram"}))
    real_step = engine.optimizer_step
    monkeypatch.setattr(engine, "optimizer_step", lambda *a: (time.sleep(0.05), real_step(*a))[1])
    r = bench.run(cfg, batches=4, rounds=1)
    assert r["train_kit_step"] < 16 / 0.05 < r["train_limit"]  # batch 16: at most 320 img/s with the sleep


def test_data_check_reports_duplicates_across_folds(small, capsys):
    assert main(["data", "split", f"data.root={small}", "split.folds=3"]) == 0
    t = read_table(load_config(None, [f"data.root={small}"]))
    people = t.df.group.unique()
    a = t.df[t.df.group == people[0]].path.iloc[0]
    b = t.df[t.df.group == people[-1]].path.iloc[0]
    shutil.copy(a, b)
    rc = main(["data", "check", f"data.root={small}", "split.folds=3"])
    out = capsys.readouterr().out
    assert "identical content" in out and a in out and b in out
    split = pd.read_csv(next((small / "splits").glob("*.csv")))
    fold_of = dict(zip(split.path, split.fold))
    same_fold = len({fold_of[str(Path(p).relative_to(small))] for p in (a, b)}) == 1
    assert rc == (0 if same_fold else 1)  # identical images in two folds is leakage: an error


def test_a_truncated_disk_cache_is_rebuilt_not_read(small, tmp_path, caplog):
    paths = paths_of(small)
    first = np.array(ds.build_cache(paths, (24, 20), "disk", tmp_path / "c", 1))
    (file,) = (tmp_path / "c").glob("*.npy")
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size // 2)
    again = ds.build_cache(paths, (24, 20), "disk", tmp_path / "c", 1)
    assert np.array_equal(again, first) and "rebuilding" in caplog.text
    assert file.stat().st_size > first.nbytes  # whole again


def test_16_bit_greyscale_is_scaled_by_its_range_not_clipped_white(tmp_path):
    from PIL import Image

    ramp = (np.arange(64 * 64).reshape(64, 64) * 4 + 1000).astype(np.uint16)  # 1000..17380 of 65535
    p = tmp_path / "scan16.png"
    Image.fromarray(ramp).save(p)
    assert Image.open(p).mode.startswith("I;16")
    img = ds.decode(str(p), (64, 64))
    assert img.shape == (64, 64, 3) and img.min() == 0 and img.max() == 255  # the whole range is used
    assert (img[..., 0] == img[..., 1]).all() and img[0, 0, 0] < img[32, 0, 0] < img[63, 63, 0]
    float_img = tmp_path / "f.tif"
    Image.fromarray(ramp.astype(np.float32) / 1e4, "F").save(float_img)
    assert ds.decode(str(float_img), (64, 64)).max() == 255


def test_more_pixels_than_max_pixels_is_refused_by_name(tmp_path):
    from PIL import Image

    p = tmp_path / "huge.png"
    Image.new("RGB", (400, 300)).save(p)
    with pytest.raises(DataError, match="huge.png.*400x300.*data.max_pixels=100000"):
        ds.decode(str(p), (32, 32), max_pixels=100_000)


def test_transparency_is_composited_on_white_not_the_colour_hidden_under_it(tmp_path, caplog):
    from baseline.data.dataset import decode_all

    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200  # red under every pixel
    rgba[:, 8:, 3] = 255  # the right half opaque, the left half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "la.png")
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([200, 0, 0] + [0, 0, 200] * 255)
    pal.paste(1, (8, 0, 16, 16))
    pal.save(tmp_path / "p.png", transparency=0)  # index 0 (red) is the transparent one
    Image.new("RGBA", (16, 16), (10, 20, 30, 255)).save(tmp_path / "opaque.png")
    paths = [str(tmp_path / n) for n in ("rgba.png", "la.png", "p.png", "opaque.png")]
    out = np.zeros((4, 16, 16, 3), np.uint8)
    with caplog.at_level("WARNING"):
        decode_all(paths, (16, 16), out, interpolation="nearest")
    for k in range(3):
        assert (out[k, :, :8] == 255).all(), paths[k]  # white, not red
    assert tuple(out[0, 0, 12]) == (200, 0, 0) and tuple(out[2, 0, 12]) == (0, 0, 200)
    assert tuple(out[3, 0, 0]) == (10, 20, 30)  # an alpha channel that is all opaque changes nothing
    assert "3 image(s) have transparent pixels" in caplog.text


def test_a_folder_named_in_nfd_is_found_from_a_csv_in_nfc(synth_copy):
    import unicodedata

    from baseline.data.layouts import read_table
    from tests.conftest import cfg_for

    csv = synth_copy / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    old = df.loc[0, "path"]
    pid, gender, _, age = old.split("_")
    nfc = unicodedata.normalize("NFC", f"{pid}_{gender}_아시아_{age}")  # a Korean race field
    (synth_copy / "train" / "images" / old).rename(synth_copy / "train" / "images" / unicodedata.normalize("NFD", nfc))
    df.loc[0, "path"] = nfc  # as a CSV written on Linux or Windows spells it; the zip from a Mac wrote NFD
    df.to_csv(csv, index=False)
    table = read_table(cfg_for(synth_copy))
    first = table.df[table.df["group"] == df.loc[0, "id"]]
    assert len(first) == 7 and all(Path(p).is_file() for p in first["path"])


def ids(sampler) -> list[int]:
    return [i for i, _ in sampler]


def test_the_balanced_sampler_evens_the_classes_and_splits_one_draw_across_ranks():
    labels = [0] * 160 + [1] * 32 + [2] * 8  # 80% / 16% / 4%
    one = ds.BalancedSampler(labels, 1.0, 1, 0, seed=3)
    one.set_epoch(2)
    share = np.bincount(np.asarray(labels)[ids(one)], minlength=3) / len(one)
    assert len(one) == 200 and np.all(np.abs(share - 1 / 3) < 0.08), share
    soft = ds.BalancedSampler(labels, 0.5, 1, 0, seed=3)
    soft_share = np.bincount(np.asarray(labels)[ids(soft)], minlength=3) / 200
    assert soft_share[0] > share[0] + 0.1 and soft_share[2] < share[2]  # power 0.5: halfway to balanced

    ranks = [ds.BalancedSampler(labels, 1.0, 2, r, seed=3) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(2)
    a, b = ids(ranks[0]), ids(ranks[1])
    assert len(a) == len(b) == 100
    interleaved = [x for pair in zip(a, b) for x in pair]
    assert interleaved == ids(one)  # the two ranks' shares are one process's draw, position by position
    ranks[0].skip = 40  # a resumed epoch goes on where it stopped
    assert ids(ranks[0]) == a[40:] and len(ranks[0]) == 60
    other = ds.BalancedSampler(labels, 1.0, 1, 0, seed=3)
    other.set_epoch(3)
    assert ids(other) != ids(one)  # a new draw every epoch


def test_age_edges_and_dropped_ages_change_training_labels_only(synth_root, tmp_path):
    from baseline import session
    from baseline.data.competition import label
    from baseline.data.split import load_or_write_folds
    from tests.conftest import cfg_for

    over = {"split.folds": 3, "data.img_size": 32, "data.age_edges": "[30,40]", "data.drop_ages": "[25,26,27,28,29]"}
    cfg = cfg_for(synth_root, **over)
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    train_ds, val_ds = session.build_datasets(cfg, table, fold, session.Images(None))
    df = table.df.set_index("path")
    tr = df.loc[list(train_ds.paths)]
    assert not tr["age"].isin(range(25, 30)).any()  # left out of training
    expected = [label(m, g, a, (30, 40)) for m, g, a in zip(tr["mask"], tr["gender"], tr["age"])]
    assert train_ds.labels == expected and (tr["age"].between(40, 59)).any()  # 40-59 train as the oldest bucket
    va = df.loc[list(val_ds.paths)]
    assert val_ds.labels == va["label"].tolist()  # validation: the official labels, every age kept
    assert va["age"].isin(range(25, 30)).any() or not df["age"].isin(range(25, 30)).any()

    # a whole run: OOF (and so CV, the ensemble, the audit) and the submission stay official
    over_run = tiny_overrides(synth_root, tmp_path / "runs", **{"run.name": "edge", "data.age_edges": "[30,40]"})
    assert main(["train", *over_run]) == 0
    oof = pd.read_csv(tmp_path / "runs" / "edge" / "oof.csv")
    assert oof["label"].tolist() == df.loc[oof["path"], "label"].tolist()
    out = tmp_path / "sub.csv"
    assert main(["submit", *over_run, f"submit.out={out}", f"submit.ledger={tmp_path / 'ledger.csv'}"]) == 0
    assert pd.read_csv(out).ans.between(0, 17).all()


def test_age_edges_are_refused_off_the_mask_layout(tmp_path):
    from baseline.config import ConfigError

    with pytest.raises(ConfigError, match="for the mask layout"):
        load_config(None, ["data.format=csv", "data.age_edges=[30,58]"])
    with pytest.raises(ConfigError, match="0 < a < b"):
        load_config(None, ["data.age_edges=[60,30]"])
