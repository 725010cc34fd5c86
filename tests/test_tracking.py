"""W&B offline runs with real files, disabled mode, no API key anywhere, local figures, leaderboard."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from baseline.cli import main
from baseline.config import WandbCfg
from baseline.defaults import resolve_mode
from baseline.leaderboard import leaderboard
from tests.conftest import tiny_overrides

SECRET = "0123456789abcdef0123456789abcdef01234567"


def test_mode_auto_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_mode(WandbCfg(mode="auto")) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    assert resolve_mode(WandbCfg(mode="auto")) == "online"
    assert resolve_mode(WandbCfg(mode="disabled")) == "disabled"


def wandb_records(path: Path) -> list[bytes]:
    """The records of a .wandb file: W&B's LevelDB-style log (7-byte header, 32 KiB blocks,
    records of checksum(4) length(2) type(1) with FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, part = [], 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        length, kind = int.from_bytes(data[pos + 4: pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            out.append(part)
    return out


def read_wandb_history(run_dir: Path) -> list[dict]:
    """History rows of the offline run, decoded with wandb's own protobuf schema."""
    from wandb.proto import wandb_internal_pb2

    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    rows = []
    for raw in wandb_records(files[0]):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in rec.history.item})
    return rows


@pytest.mark.slow
def test_offline_run_writes_real_files_with_logged_keys_and_no_key(synth_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)  # present in the environment, must never be written
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "wb", "log.wandb.mode": "offline", "train.epochs": 2,
                                               "train.log_interval": 2, "log.wandb.group": "exp1",
                                               "log.figures": True})
    assert main(["train", *over]) == 0
    run = runs / "wb"
    history = read_wandb_history(run)
    keys = set().union(*history)
    for k in ("train/loss", "train/lr", "val_f1", "val_acc", "val_loss", "trainable_params", "epoch_s",
              "images_per_s", "mem_rss_mb", "confusion_matrix_table", "worst_predictions"):
        assert any(k in key for key in keys), (k, sorted(keys))
    assert any(key.startswith("val_f1_class/") for key in keys)
    for f in ("learning_curves.png", "confusion_matrix.png"):
        assert (run / f).stat().st_size > 1000
    wandb_id = json.loads((run / "summary.json").read_text())["wandb_id"]
    assert wandb_id and wandb_id in str(next(run.glob("wandb/offline-run-*")))
    for f in run.rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f"API key written to {f}"


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run(synth_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "wr", "log.wandb.mode": "offline"})
    assert main(["train", *over]) == 0
    first = json.loads((runs / "wr" / "summary.json").read_text())["wandb_id"]
    time.sleep(1.0)  # W&B names a session's folder by the second it started
    assert main(["train", *over, "train.epochs=2", "run.resume=auto"]) == 0
    assert json.loads((runs / "wr" / "summary.json").read_text())["wandb_id"] == first
    assert len(list((runs / "wr").glob(f"wandb/offline-run-*-{first}"))) == 2


@pytest.mark.slow
def test_disabled_mode_writes_no_wandb_files(synth_root, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "off", "log.figures": True})]) == 0
    assert not list(runs.rglob("wandb"))
    assert (runs / "off" / "metrics.csv").is_file() and (runs / "off" / "learning_curves.png").is_file()
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "bare"})]) == 0  # log.figures=false
    assert (runs / "bare" / "summary.json").is_file() and not list((runs / "bare").glob("*.png"))


def fake_run(root, name, fmt="mask", n_cls=18, f1=None, error=None, last=False):
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"format": fmt, "root": f"data/{fmt}"},
                                                   "model": {"name": "m"}, "split": {"fold": 0}}))
    (d / "classes.json").write_text(json.dumps([str(i) for i in range(n_cls)]))
    if f1 is not None:
        (d / "summary.json").write_text(json.dumps({"val_f1": f1, "epochs_done": 3}))
    if error:
        (d / "error.txt").write_text(error)
    if last:
        (d / "checkpoints" / "last.pt").write_bytes(b"x")


def test_leaderboard_ranks_within_each_data_set_and_shows_every_state(tmp_path, capsys):
    fake_run(tmp_path, "a", f1=0.5)
    fake_run(tmp_path, "b", f1=0.9)
    fake_run(tmp_path, "sweeps/s/t1", f1=0.7)
    fake_run(tmp_path, "digits", fmt="csv", n_cls=3, f1=0.99)
    fake_run(tmp_path, "crashed", error="OutOfMemory: out of memory in epoch 2")
    fake_run(tmp_path, "killed", last=True)
    board = leaderboard(tmp_path)
    assert board.run.tolist() == ["digits", "b", "sweeps/s/t1", "a", "crashed", "killed"]
    assert board.data.tolist()[:2] == ["csv:csv (3 classes)", "mask:mask (18 classes)"]
    states = dict(zip(board.run, board.state))
    assert states["b"] == "finished" and states["killed"] == "stopped"
    assert states["crashed"] == "failed: OutOfMemory: out of memory in epoch 2"
    assert main(["runs", f"run.dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    printed = [line.split()[0] for line in out.splitlines()[1:] if not line.startswith("note")]
    assert printed == board.run.tolist() and "2 different data sets" in out


def test_default_run_name_is_readable():
    from baseline.config import load_config
    from baseline.rundir import run_name

    name = run_name(load_config(None, ["model.name=resnet18", "split.fold=3"]))
    assert name.startswith("resnet18-f3-") and len(name.split("-")[-1]) == 6


def test_truncate_metrics_drops_epochs_after_the_checkpoint(tmp_path):
    from baseline.tracking import truncate_metrics

    p = tmp_path / "metrics.csv"
    p.write_text("epoch,val_f1\n1,0.1\n2,0.2\n3,0.3\n")
    truncate_metrics(p, 2)
    assert pd.read_csv(p).epoch.tolist() == [1, 2]
