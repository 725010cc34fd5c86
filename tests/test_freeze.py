"""Transfer learning: a kit-made 'pretrained' file, a new head, and truly frozen backbones."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import timm
import torch

from baseline import freeze
from baseline.cli import main
from baseline.config import ConfigError, ModelCfg, load_config
from baseline.models import ModelError, create
from tests.conftest import tiny_overrides

SCHEDULE = "freeze.schedule=[{epoch: 0, train: head}, {epoch: 1, train: all, lr_scale: 0.1}]"


@pytest.fixture(scope="module")
def pretrained_file(synth_root, tmp_path_factory):
    """Train on the built-in 18-class task and keep its best.pt: our own 'pretrained' weights."""
    runs = tmp_path_factory.mktemp("pre")
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "src"})]) == 0
    return runs / "src" / "checkpoints" / "best.pt"


def backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.mark.slow  # its fixture trains
def test_local_file_loads_backbone_and_makes_a_new_head(pretrained_file):
    src = torch.load(pretrained_file, weights_only=True)["model"]
    model = create(ModelCfg(name="test_resnet", pretrained=str(pretrained_file)), num_classes=5)
    state = model.state_dict()
    assert state["fc.weight"].shape[0] == 5
    for k, v in backbone(src).items():
        assert torch.equal(state[k], v), k
    same_count = create(ModelCfg(name="test_resnet", pretrained=str(pretrained_file)), num_classes=18)
    assert torch.equal(same_count.state_dict()["fc.weight"], src["fc.weight"])  # same classes: head kept


def test_safetensors_and_plain_state_dict_files(tmp_path):
    from safetensors.torch import save_file

    m = timm.create_model("test_resnet", num_classes=7)
    save_file(m.state_dict(), tmp_path / "w.safetensors")
    torch.save(m.state_dict(), tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        got = create(ModelCfg(name="test_resnet", pretrained=str(tmp_path / f)), num_classes=3).state_dict()
        assert torch.equal(got["conv1.0.weight"], m.state_dict()["conv1.0.weight"])


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    torch.save(timm.create_model("test_efficientnet").state_dict(), tmp_path / "eff.pth")
    with pytest.raises(ModelError, match="does not fit 'test_resnet'"):
        create(ModelCfg(name="test_resnet", pretrained=str(tmp_path / "eff.pth")), num_classes=3)


def test_hub_weights_offline_fail_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="model.pretrained=/path/to/weights"):
        create(ModelCfg(name="resnet18", pretrained=True), num_classes=3)


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet", "test_vit", "convnext_atto"])
def test_stages_come_from_timm_grouping(name):
    model = timm.create_model(name, num_classes=4)
    cfg = load_config(None, ["freeze.schedule=[{epoch: 0, train: last_stages, stages: 1}]"])
    f = freeze.Freezer(cfg, model)
    f.freeze_for(0)
    head = {n for n, p in model.get_classifier().named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(f.stages) >= 2
    classifier = model.pretrained_cfg["classifier"]
    assert head and {f"{classifier}.{n}" for n in head} <= trainable  # the whole head trains
    total = sum(p.numel() for p in model.parameters())
    assert 0 < f.trainable_count() < total


@pytest.mark.parametrize("bad, key", [
    ("[{epoch: 1, train: head}]", "first phase must start at epoch 0"),
    ("[{epoch: 0, train: legs}]", "freeze.schedule\\[0\\].train"),
    ("[{epoch: 0, train: last_stages}]", "stages"),
    ("[{epoch: 0, train: all, lr: 3}]", "unknown key"),
])
def test_bad_schedule_is_rejected(bad, key):
    cfg = load_config(None, [f"freeze.schedule={bad}"])
    with pytest.raises(ConfigError, match=key):
        freeze.resolve_schedule(cfg)


def check_frozen_then_unfrozen(run_dir, pretrained_file):
    src = torch.load(pretrained_file, weights_only=True)["model"]
    e1 = torch.load(run_dir / "checkpoints" / "epoch001.pt", weights_only=True)["model"]
    e2 = torch.load(run_dir / "checkpoints" / "epoch002.pt", weights_only=True)["model"]
    bb = backbone(src)
    assert any("running_mean" in k for k in bb) and any("num_batches_tracked" in k for k in bb)
    for k, v in bb.items():  # weights, BN affine params and BN buffers: bit-identical while frozen
        assert torch.equal(e1[k], v), f"{k} changed during the head-only epoch"
    assert not torch.equal(e1["fc.weight"], e2["fc.weight"])
    changed = [k for k, v in bb.items() if not torch.equal(e2[k], v)]
    assert any(k.startswith("conv1.") and k.endswith("weight") for k in changed)
    assert any("running_mean" in k for k in changed)
    m = pd.read_csv(run_dir / "metrics.csv")
    assert "lr_backbone" in m and pd.isna(m.lr_backbone[0])  # epoch 1: no backbone group
    assert m.lr_backbone[1] == pytest.approx(0.1 * m.lr_head[1])
    assert m.trainable_params[0] < m.trainable_params[1]


@pytest.mark.slow
def test_head_only_epoch_keeps_backbone_bit_identical(tiny, tmp_path, pretrained_file):
    over = tiny(**{
        "run.name": "ft", "train.epochs": 2, "sched.name": "none", "train.keep_top_k": 2,
        "model.pretrained": pretrained_file,
        "data.synth_people": 30})
    assert main(["train", *over, SCHEDULE]) == 0
    check_frozen_then_unfrozen(tmp_path / "runs" / "ft", pretrained_file)


@pytest.mark.slow
def test_head_only_epoch_under_two_process_ddp(tiny, tmp_path, pretrained_file):
    over = tiny(**{
        "run.name": "ddp", "train.epochs": 2, "sched.name": "none", "train.keep_top_k": 2,
        "model.pretrained": pretrained_file,
        "train.batch_size": 8})
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "baseline", "train", *over, SCHEDULE], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_frozen_then_unfrozen(tmp_path / "runs" / "ddp", pretrained_file)


def test_layer_decay_gives_earlier_layers_smaller_lr_scales():
    model = timm.create_model("test_resnet", num_classes=4)
    cfg = load_config(None, ["optim.layer_decay=0.5", "model.name=test_resnet"])
    f = freeze.Freezer(cfg, model)
    f.freeze_for(0)
    scale_of = {id(p): g["lr_scale"] for g in f.optimizer().param_groups for p in g["params"]}
    by_depth = [scale_of[id(p)] for _, p in model.named_parameters()]  # timm lists parameters input to output
    assert by_depth == sorted(by_depth), "an earlier layer got a larger LR scale than a later one"
    assert by_depth[0] < 0.2 and by_depth[-1] == pytest.approx(1.0) and len(set(by_depth)) >= 3
    assert scale_of[id(model.get_classifier().weight)] == pytest.approx(1.0)  # the head trains at the full LR
    with pytest.raises(ConfigError, match="optim.layer_decay"):
        load_config(None, ["optim.layer_decay=0.5", "sched.name=none"])
