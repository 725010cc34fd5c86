"""Faults a team meets in week two: a read-only data disk (the usual shared team mount)."""

import shutil
import subprocess

import pytest

from baseline.cli import main


@pytest.fixture
def read_only_data(synth_root, tmp_path):
    """A copy of the built-in data behind a real read-only bind mount (root only)."""
    src, dst = tmp_path / "src", tmp_path / "ro"
    shutil.copytree(synth_root, src)
    shutil.rmtree(src / "splits", ignore_errors=True)
    dst.mkdir()
    if subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need root")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], check=True, capture_output=True)
        yield dst
    finally:
        subprocess.run(["umount", str(dst)], capture_output=True)


@pytest.mark.slow
def test_a_read_only_data_disk_says_split_file_fixes_it(read_only_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    over = [f"data.root={read_only_data}", f"run.dir={runs}", "model.name=test_resnet", "data.img_size=32",
            "train.epochs=1", "train.batch_size=16", "log.wandb.mode=disabled", "split.folds=3", "log.figures=false"]
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and "split.file=" in err and "Traceback" not in err, err
    assert not runs.exists()
    assert main(["train", *over, f"split.file={tmp_path / 'folds.csv'}", "run.name=ro"]) == 0
    assert (runs / "ro" / "summary.json").is_file()


@pytest.fixture
def small_disk(tmp_path):
    """A real 6 MB tmpfs: room for one test_resnet checkpoint (4.4 MB) and not for a second beside it."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("tmpfs mounts need root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary(tiny, small_disk, capsys):
    import torch

    over = tiny(**{"run.dir": str(small_disk), "run.name": "full", "train.epochs": 2})
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "run.resume=auto" in err and "Traceback" not in err, err
    ckpts = small_disk / "full" / "checkpoints"
    assert not list(ckpts.glob(".*.tmp"))  # the half-written file would keep the disk full
    assert torch.load(ckpts / "last.pt", weights_only=True)["epoch"] == 1  # the previous good state
    assert "no space left" in (small_disk / "full" / "error.txt").read_text()
