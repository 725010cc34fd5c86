"""Teammates' runs: a run folder copied from another machine (whose data and weights live elsewhere)
is listed next to yours with its owner and split, joins an ensemble, resumes and submits."""

import getpass
import json
import shutil

import pandas as pd
import pytest
import timm
import torch

from baseline.cli import main
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
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line[:1] != "n"}
    assert {"alice-r", "bob-r", "other"} <= set(rows)
    assert "01234567*" in rows["other"] and "*" not in rows["alice-r"] + rows["bob-r"]
    assert f" {getpass.getuser()} " in rows["alice-r"]  # the owner column

    assert main(["ensemble", "alice-r", "bob-r", "--dir", str(bob / "runs"), "--dir", str(bob / "team"),
                 "--name", "team"]) == 0  # OOF rows line up by image, not by path
    out = capsys.readouterr().out
    assert "OOF macro-F1" in out and "alice-r" in out and "bob-r" in out

    resumed = tiny_overrides(bob / "data", bob / "team", **{"run.name": "alice-r", "run.resume": "auto",
                                                             "train.epochs": 2, "model.pretrained": weights})
    assert main(["train", *resumed]) == 0  # her weights file is gone: the checkpoint holds the weights
    assert len(pd.read_csv(bob / "team" / "alice-r" / "metrics.csv")) == 2

    out_csv = bob / "sub.csv"
    assert main(["submit", *over_b, f"submit.checkpoints=[{bob / 'team' / 'alice-r'}]", f"submit.out={out_csv}"]) == 0
    assert len(pd.read_csv(out_csv)) == len(pd.read_csv(bob / "data" / "eval" / "info.csv"))
