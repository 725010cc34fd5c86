import shutil

import numpy as np
import pandas as pd
import pytest

from baseline.data.layouts import DataError, read_table
from baseline.data.split import (
    assign_folds,
    check_duplicates,
    check_groups,
    file_hash,
    load_or_write_folds,
    read_folds,
    write_split,
)
from baseline.data.synth import write_synth
from tests import conftest


@pytest.fixture
def root(synth_root):
    return synth_root


def cfg_for(root, tmp_path, **kw):
    """Five folds, the split file in this test's own folder (the shared data stays unsplit)."""
    return conftest.cfg_for(root, **{"split.file": tmp_path / "split.csv", "split.folds": 5, **kw})


def test_no_person_in_two_folds(root, tmp_path):
    cfg = cfg_for(root, tmp_path)
    table = read_table(cfg)
    fold = read_folds(cfg, table, write_split(cfg, table))
    per_person = pd.Series(fold).groupby(table.df.group.to_numpy()).nunique()
    assert (per_person == 1).all()
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]


def test_fold_proportions_close_to_the_whole(tmp_path):
    root = write_synth(tmp_path / "d", people=60, seed=3)  # 12 people a fold: enough to measure the mix
    table = read_table(cfg_for(root, tmp_path))
    fold = assign_folds(table.df, 5, seed=0)
    # gender x age bucket of the person: what the split stratifies on
    key = table.df.gender * 3 + table.df.age.map(lambda a: 0 if a < 30 else (1 if a < 60 else 2))
    whole = key.value_counts(normalize=True)
    for k in range(5):
        share = key[fold == k].value_counts(normalize=True).reindex(whole.index, fill_value=0)
        assert (share - whole).abs().max() < 0.12, (k, share, whole)
    # mask classes: 5/7, 1/7, 1/7 in every fold, since whole people move together
    for k in range(5):
        m = table.df["mask"][fold == k].value_counts(normalize=True)
        assert m[0] == pytest.approx(5 / 7) and m[2] == pytest.approx(1 / 7)


def test_deterministic_for_a_seed_and_identical_after_reload(root, tmp_path):
    cfg = cfg_for(root, tmp_path)
    table = read_table(cfg)
    a, b = assign_folds(table.df, 5, 7), assign_folds(table.df, 5, 7)
    assert (a == b).all()
    assert not (assign_folds(table.df, 5, 8) == a).all()
    path = write_split(cfg, table)
    h = file_hash(path)
    fold, h2 = load_or_write_folds(cfg, table)  # reads, never re-draws
    assert h2 == h == file_hash(path)  # the hash of the bytes the folds were read from
    assert (fold == read_folds(cfg, table, path)).all()


def test_more_folds_than_groups_is_an_error(root, tmp_path):
    table = read_table(cfg_for(root, tmp_path))
    small = table.df[table.df.group.isin(table.df.group.unique()[:3])]
    with pytest.raises(DataError, match="only 3 group"):
        assign_folds(small, 5, 0)


def test_hand_edited_split_with_a_person_in_two_folds_is_caught(root, tmp_path):
    cfg = cfg_for(root, tmp_path)
    table = read_table(cfg)
    path = write_split(cfg, table)
    df = pd.read_csv(path, dtype={"group": str})
    person = df.group.iloc[0]
    rows = df.index[df.group == person]
    df.loc[rows[0], "fold"] = (df.loc[rows[1], "fold"] + 1) % 5
    df.to_csv(path, index=False)
    fold = read_folds(cfg, table, path)
    with pytest.raises(DataError, match=f"group '{person}' is in 2 folds"):
        check_groups(table, fold, path)


def test_identical_image_in_train_and_val_is_caught(tmp_path):
    root = write_synth(tmp_path / "d", people=10, seed=4)
    cfg = cfg_for(root, tmp_path, **{"split.folds": 2})
    table = read_table(cfg)
    fold = assign_folds(table.df, 2, 0)
    a = table.df.path[np.flatnonzero(fold == 0)[0]]
    b = table.df.path[np.flatnonzero(fold == 1)[0]]
    shutil.copy(a, b)
    with pytest.raises(DataError, match="identical image"):
        check_duplicates(table, fold, 0)


def test_split_file_that_misses_new_images_is_an_error(root, tmp_path):
    cfg = cfg_for(root, tmp_path)
    table = read_table(cfg)
    path = write_split(cfg, table)
    df = pd.read_csv(path)
    df.iloc[1:].to_csv(path, index=False)
    with pytest.raises(DataError, match="does not list 1 image"):
        read_folds(cfg, table, path)


def copy_person_under_new_id(root, src_row=1):
    """One person's folder copied under a second id: the leakage a careless data dump makes."""
    csv = root / "train" / "train.csv"
    df = pd.read_csv(csv, dtype=str)
    src = df.iloc[src_row]
    clone = src.copy()
    clone["id"] = "999999"
    clone["path"] = "999999_" + src["path"].split("_", 1)[1]
    shutil.copytree(root / "train" / "images" / src["path"], root / "train" / "images" / clone["path"])
    pd.concat([df, clone.to_frame().T]).to_csv(csv, index=False)
    return src["id"], clone["id"]


def test_data_check_flags_a_copied_person_until_the_split_keeps_them_together(tmp_path):
    from baseline.data.check import check

    root = write_synth(tmp_path / "d", people=12, seed=4)
    copy_person_under_new_id(root)
    cfg = cfg_for(root, tmp_path, **{"split.folds": 3})
    lines = []
    assert check(cfg, out=lines.append) == 7  # before any split: 7 identical images across two groups
    assert any("identical image(s) belong to different groups" in line for line in lines)
    table = read_table(cfg)
    read_folds(cfg, table, write_split(cfg, table))
    assert check(cfg, out=lambda _: None) == 0  # once the split keeps them together, no error


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_puts_a_copied_person_in_one_fold(tmp_path, seed, caplog):
    root = write_synth(tmp_path / "d", people=12, seed=4)
    original, copy = copy_person_under_new_id(root)
    cfg = cfg_for(root, tmp_path, **{"split.folds": 3, "seed": seed})
    table = read_table(cfg)
    fold = read_folds(cfg, table, write_split(cfg, table))
    groups = table.df.group.to_numpy()
    assert len(set(fold[(groups == original) | (groups == copy)])) == 1
    assert "1 group(s) joined others" in caplog.text
    check_duplicates(table, fold, 0)  # no identical image across train / validation
