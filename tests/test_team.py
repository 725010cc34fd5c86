"""Teammates' runs: a run folder copied from another machine (whose data and weights live elsewhere)
is listed next to yours with its owner and split, joins an ensemble, resumes and submits."""

import getpass
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import yaml

from baseline.cli import main
from baseline.data.split import file_hash
from baseline.leaderboard import leaderboard
from tests.conftest import tiny_overrides


@pytest.mark.slow
def test_a_teammates_run_copied_from_another_machine_lists_ensembles_resumes_and_submits(synth_root, tmp_path,
                                                                                        capsys, monkeypatch):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    monkeypatch.chdir(tmp_path)  # ensembles/ is written in the working folder
    shutil.copytree(synth_root, alice / "data")
    weights = alice / "test_resnet.pth"  # her "pretrained" file: bob's machine never has it
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), weights)
    over_a = tiny_overrides(alice / "data", alice / "runs", **{"run.name": "alice-r", "model.pretrained": weights})
    assert main(["train", *over_a]) == 0

    # Bob gets the same data (with the team's split file) and alice's run folder, then she leaves.
    shutil.copytree(alice / "data", bob / "data")
    shutil.copytree(alice / "runs" / "alice-r", bob / "team" / "alice-r")
    shutil.rmtree(alice)
    over_b = tiny_overrides(bob / "data", bob / "runs", **{"run.name": "bob-r", "optim.lr": 0.01})
    assert main(["train", *over_b]) == 0
    other = bob / "runs" / "other"  # a run made on another split file: bob-r with that split's hash
    shutil.copytree(bob / "runs" / "bob-r", other)
    summary = json.loads((other / "summary.json").read_text())
    (other / "summary.json").write_text(json.dumps({**summary, "split_hash": "0123456789abcdef"}))
    capsys.readouterr()

    assert main(["runs", "--dir", str(bob / "runs"), "--dir", str(bob / "team"), f"data.root={bob / 'data'}",
                 "split.folds=3"]) == 0
    team_split = file_hash(bob / "data" / "splits" / "folds3_seed42.csv")
    board = leaderboard([bob / "runs", bob / "team"], team_split).set_index("run")  # what `runs` printed
    assert set(board.index) == {"alice-r", "bob-r", "other"}
    assert board.loc["other", "split"] == "01234567*"  # another split file: marked
    assert board.loc["alice-r", "split"] == board.loc["bob-r", "split"] == team_split[:8]
    assert board.loc["alice-r", "owner"] == getpass.getuser() and board.loc["alice-r", "root"] == str(bob / "team")
    assert board.loc["alice-r", "data"] == board.loc["bob-r", "data"]  # her data lived elsewhere: the same set
    printed = capsys.readouterr().out
    assert all(run in printed for run in board.index) and "marked * were made on another split" in printed

    assert main(["ensemble", "alice-r", "bob-r", "--dir", str(bob / "runs"), "--dir", str(bob / "team"),
                 "--name", "team"]) == 0  # OOF rows line up by image, not by path
    spec = yaml.safe_load((tmp_path / "ensembles" / "team.yaml").read_text())
    members = {Path(m["path"]).parts[len((bob / "runs").parts)]: m["weight"] for m in spec["members"]}
    assert set(members) == {"alice-r", "bob-r"} and sum(members.values()) == pytest.approx(1.0)
    assert 0 < spec["oof_f1"] <= 1

    resumed = tiny_overrides(bob / "data", bob / "team", **{"run.name": "alice-r", "run.resume": "auto",
                                                             "train.epochs": 2, "model.pretrained": weights})
    first = pd.read_csv(bob / "team" / "alice-r" / "metrics.csv")
    assert main(["train", *resumed]) == 0  # her weights file is gone: the checkpoint holds the weights
    m = pd.read_csv(bob / "team" / "alice-r" / "metrics.csv")
    assert m.epoch.tolist() == [1, 2] and m.iloc[0][first.columns].equals(first.iloc[0])  # her epoch kept, one more

    out_csv = bob / "sub.csv"
    assert main(["submit", *over_b, f"submit.checkpoints=[{bob / 'team' / 'alice-r'}]", f"submit.out={out_csv}"]) == 0
    sub, info = pd.read_csv(out_csv), pd.read_csv(bob / "data" / "eval" / "info.csv")
    assert sub["ImageID"].tolist() == info["ImageID"].tolist() and sub["ans"].between(0, 17).all()
