"""Faults a team meets in week two: a read-only data disk (the usual shared team mount)."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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
def test_a_read_only_data_disk_trains_with_no_extra_key_and_says_where_its_files_went(read_only_data, tmp_path,
                                                                                      capsys, caplog):
    runs = tmp_path / "runs"
    over = [f"data.root={read_only_data}", f"run.dir={runs}", "model.name=test_resnet", "data.img_size=32",
            "train.epochs=1", "train.batch_size=16", "log.wandb.mode=disabled", "split.folds=3", "log.figures=false",
            "run.name=ro", "data.cache=disk"]
    assert main(["train", *over]) == 0
    out = caplog.text
    stand_in = [p for p in (runs / "data").iterdir()]
    assert len(stand_in) == 1 and stand_in[0].name.startswith("ro-"), stand_in
    assert f"data root {read_only_data} is read-only" in out and str(stand_in[0]) in out, out
    assert (stand_in[0] / "splits" / "folds3_seed42.csv").is_file()
    assert len(list((stand_in[0] / ".cache").glob("*.npy"))) == 1  # the decode cache too
    assert (runs / "ro" / "summary.json").is_file()
    # a second run and the data check find the same split file (the same hash), and the report goes there too
    assert main(["train", *over[:-2], "run.name=ro2"]) == 0
    a, b = (json.loads((runs / n / "summary.json").read_text())["split_hash"] for n in ("ro", "ro2"))
    assert a == b
    assert main(["data", "check", *over]) == 0
    assert (stand_in[0] / "report").is_dir()
    assert "Traceback" not in capsys.readouterr().err


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
@pytest.mark.parametrize("background", ["false", "true"])  # written by the loop, or by a thread (a GPU's default)
def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary(background, tiny, small_disk, capsys):
    import torch

    over = tiny(**{"run.dir": str(small_disk), "run.name": "full", "train.epochs": 2, "train.async_save": background})
    assert main(["train", *over]) == 2
    err = capsys.readouterr().err
    assert "no space left on device" in err and "run.resume=auto" in err and "Traceback" not in err, err
    ckpts = small_disk / "full" / "checkpoints"
    assert not list(ckpts.glob(".*.tmp"))  # the half-written file would keep the disk full
    assert torch.load(ckpts / "last.pt", weights_only=True)["epoch"] == 1  # the previous good state
    assert "no space left" in (small_disk / "full" / "error.txt").read_text()


def test_a_full_disk_under_any_run_file_is_one_line_and_leaves_no_temporary(small_disk):
    """Not only checkpoints: oof.csv, metrics, summaries (files.atomic) meet a full disk as DiskFull, the
    CLI's one line; seen when a background checkpoint filled the disk just before oof.csv was written."""
    import numpy as np
    import pandas as pd

    from baseline import files
    from baseline.errors import USER_ERRORS, DiskFull

    big = pd.DataFrame(np.random.default_rng(0).random((200_000, 8)))  # ~30 MB of CSV for a 6 MB disk
    with pytest.raises(DiskFull, match=r"oof.csv' \(no space left on device.*run.resume=auto") as e:
        files.write_csv(small_disk / "run" / "oof.csv", big)
    assert isinstance(e.value, USER_ERRORS) and not list((small_disk / "run").iterdir())


# ---------------------------------------------------------------- a multi-process run loses a rank
def ddp_run(over: list[str], metrics, rows: int):
    """`baseline train --nproc 2 ...` started in the background; returns (process, rank-1 pid) once
    `metrics` holds `rows` epochs."""
    from tests.test_engine import clean_env, wait_for_rows

    proc = subprocess.Popen([sys.executable, "-m", "baseline", "train", "--nproc", "2", *over], env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_rows(metrics, rows, proc)
    return proc, rank_pid(proc.pid, 1)


def rank_pid(launcher: int, rank: int) -> int:
    """The worker process of `rank` among the launcher's children (by the RANK torchrun gave it)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    raise AssertionError(f"no rank {rank} under pid {launcher}")


DDP = {"train.epochs": 40, "train.batch_size": 8, "train.log_interval": 2}


@pytest.mark.slow
def test_a_killed_ddp_rank_is_one_line_with_exit_4_and_the_run_resumes(tiny, tmp_path):
    import pandas as pd

    over = tiny(**{"run.name": "dead", **DDP})
    metrics = tmp_path / "runs" / "dead" / "metrics.csv"
    proc, victim = ddp_run(over, metrics, 2)
    os.kill(victim, signal.SIGKILL)  # what the out-of-memory killer does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, err[-3000:]
    assert "Traceback" not in err and "ChildFailedError" not in err and "pair.cc" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]  # who died, by what, where the run stood and how to go on: one line
    assert "rank 1 of 2" in lines[0] and "SIGKILL" in lines[0] and "run.resume=auto run.name=dead" in lines[0]
    assert (tmp_path / "runs" / "dead" / "error.txt").read_text().startswith("LostPeer: lost another process")
    done = len(pd.read_csv(metrics))
    assert done < DDP["train.epochs"]

    # resume continues from the last finished epoch, every epoch once
    from tests.test_engine import clean_env

    r = subprocess.run([sys.executable, "-m", "baseline", "train", "--nproc", "2", *over, "run.resume=auto",
                        f"train.epochs={done + 1}"], env=clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert pd.read_csv(metrics).epoch.tolist() == list(range(1, done + 2))


@pytest.mark.slow
def test_bad_input_under_ddp_is_one_line_from_one_process(tiny, tmp_path):
    from tests.test_engine import clean_env

    for bad in ("optim.lr=-1", f"data.root={tmp_path / 'nowhere'}"):  # refused by the launcher; by rank 0 for all
        r = subprocess.run([sys.executable, "-m", "baseline", "train", "--nproc", "2", *tiny(), bad], env=clean_env(),
                           capture_output=True, text=True, timeout=300)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_to_one_ddp_rank_stops_every_rank_at_one_step_and_writes_last(tiny, tmp_path):
    import torch

    over = tiny(**{"run.name": "one", "data.cache": "disk", **DDP})
    proc, rank1 = ddp_run(over, tmp_path / "runs" / "one" / "metrics.csv", 1)
    os.kill(rank1, signal.SIGTERM)  # rank 1 alone asks; without agreeing, rank 0 waits in an all-reduce
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    saved = torch.load(tmp_path / "runs" / "one" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] < DDP["train.epochs"]
    # each rank its own random stream, both saved
    assert len(saved["rng_ranks"]) == 2
    assert not torch.equal(saved["rng_ranks"][0]["torch"], saved["rng_ranks"][1]["torch"])
    # the disk cache: rank 0 wrote it once, whole; the other rank opened that file (no temporary left)
    cache = [p.name for p in (Path(saved["config"]["data"]["root"]) / ".cache").iterdir() if p.name != "sha1.csv"]
    assert len(cache) == 1 and cache[0].endswith(".npy") and ".tmp" not in cache[0], cache


@pytest.mark.slow
def test_ctrl_c_ends_with_130_and_last_pt(tiny, tmp_path):
    from tests.test_engine import train_until_first_epoch

    over = tiny(**{"run.name": "int", "train.epochs": 40, "train.batch_size": 8})
    proc = train_until_first_epoch(over, tmp_path / "runs" / "int" / "metrics.csv", stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]  # 128 + SIGINT, as shells expect
    assert "stopped by SIGINT" in err and "run.resume=auto run.name=int" in err and "Traceback" not in err
    assert (tmp_path / "runs" / "int" / "checkpoints" / "last.pt").is_file()
