"""Run folder: the lock (two trainings, one refused; a dead holder's lock taken over), the resume
guard (which keys refuse, which pass), the state `baseline runs` shows."""

import json
import os
import socket
import subprocess
import sys

import pytest

from baseline import rundir
from baseline.config import load_config, to_dict


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, caplog):
    run = tmp_path / "r"
    path = rundir.acquire(run)
    assert json.loads(path.read_text())["pid"] == os.getpid()
    with pytest.raises(rundir.RunLocked, match=f"in use by pid {os.getpid()}"):
        rundir.acquire(run)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "since": "earlier"}))
    assert rundir.state(run) == "empty"  # a dead holder: not running
    rundir.acquire(run)
    assert "no longer running" in caplog.text and json.loads(path.read_text())["pid"] == os.getpid()
    path.write_text(json.dumps({"host": "another-machine", "pid": dead_pid(), "since": "earlier"}))
    with pytest.raises(rundir.RunLocked, match="another-machine"):  # its pid cannot be checked from here
        rundir.acquire(run)


@pytest.mark.parametrize("change, refused", [
    ("model.name=test_efficientnet", True), ("data.img_size=48", True), ("data.format=csv", True),
    ("train.loss=focal", True), ("freeze.preset=fine_tune", True), ("optim.lr=0.1", True),
    ("train.batch_size=8", True), ("aug.affine=0", True),
    ("train.epochs=20", False), ("data.num_workers=3", False), ("log.wandb.mode=offline", False),
    ("run.resume=auto", False), ("data.root=/moved/data", False), ("train.early_stop=3", False),
    ("train.keep_top_k=3", False), ("data.cache=disk", False),
])
def test_resume_guard_refuses_what_changes_learning(change, refused):
    saved = to_dict(load_config())
    refused_lines, allowed_lines = rundir.config_diff(saved, to_dict(load_config(None, [change])))
    key = change.split("=")[0]
    assert (refused_lines if refused else allowed_lines) and (refused_lines or allowed_lines)[0].startswith(key)
    assert not (allowed_lines if refused else refused_lines)


def test_resume_guard_refuses_another_number_of_processes(tmp_path):
    cfg = load_config()
    from dataclasses import replace

    from baseline.checkpoint import Checkpoint

    saved = Checkpoint.from_dict({"config": to_dict(cfg), "classes": ["a"], "split_hash": "h",
                                  "batch_sizes": {"world_size": 2, "batch_size_per_process": 16}})
    rundir.check_resume(cfg, saved, ["a"], "h", tmp_path / "last.pt", world_size=2)
    with pytest.raises(rundir.CheckpointError, match="processes: the checkpoint trained with 2, this run has 1 "
                                                     "\\(resume with --nproc 2\\)"):
        rundir.check_resume(cfg, saved, ["a"], "h", tmp_path / "last.pt", world_size=1)
    rundir.check_resume(cfg, replace(saved, batch_sizes=None), ["a"], "h", tmp_path / "last.pt", world_size=1)  # old


@pytest.mark.slow
def test_two_trainings_into_one_folder_one_is_refused(tiny, tmp_path):
    over = tiny(**{"run.name": "same", "train.epochs": 8})
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    cmd = [sys.executable, "-m", "baseline", "train", *over]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "is in use by pid" in refused and "Traceback" not in refused
    metrics = (tmp_path / "runs" / "same" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == [str(e) for e in range(1, 9)]  # no epoch twice
    assert rundir.state(tmp_path / "runs" / "same") == "finished"
