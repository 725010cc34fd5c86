"""Saver: one serialization per epoch, best/top-k as links to it, top-k order and eviction."""

import pytest
import torch

from baseline import checkpoint as ckpt
from baseline.config import load_config


def test_saver_serializes_once_and_links_best_and_top_k(tmp_path, monkeypatch):
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f: (saves.append(f), real_save(obj, f)))
    saver = ckpt.Saver(tmp_path, "max", keep_top_k=2)
    for epoch, metric in enumerate([0.5, 0.7, 0.6, 0.4], start=1):
        state = ckpt.Checkpoint(model={"w": torch.tensor([float(epoch)])})
        saver.save(state, epoch, metric, is_best=metric == 0.7 or epoch == 1)
    assert len(saves) == 4  # one torch.save per epoch, whatever best and top-k add
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "epoch002.pt", "epoch003.pt", "last.pt"]  # epoch 1 and 4 evicted / never kept
    assert ckpt.load(tmp_path / "best.pt")["model"]["w"].item() == 2.0
    assert ckpt.load(tmp_path / "last.pt")["model"]["w"].item() == 4.0
    assert (tmp_path / "best.pt").stat().st_ino == (tmp_path / "epoch002.pt").stat().st_ino
    # the checkpoint carries the top-k list as it is after this epoch, so a resume evicts correctly
    assert [t[:2] for t in ckpt.load(tmp_path / "last.pt")["top"]] == [[0.7, "epoch002.pt"], [0.6, "epoch003.pt"]]


def test_a_kill_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    saver = ckpt.Saver(tmp_path, "max", keep_top_k=1)
    saver.save(ckpt.Checkpoint(model={"w": torch.tensor([1.0])}), 1, 0.5, is_best=True)

    def dies(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    try:
        saver.save(ckpt.Checkpoint(model={"w": torch.tensor([2.0])}), 2, 0.9, is_best=True)
    except KeyboardInterrupt:
        pass
    assert ckpt.load(tmp_path / "last.pt")["model"]["w"].item() == 1.0
    assert ckpt.load(tmp_path / "best.pt")["model"]["w"].item() == 1.0


@pytest.mark.slow
def test_averaged_weights_are_the_mean_of_the_top_k_checkpoints_with_bn_statistics_measured_again(tiny, tmp_path):
    import json

    from baseline.cli import main

    over = tiny(**{"run.name": "avg", "train.epochs": 4, "train.keep_top_k": 3, "train.avg_top_k": 3,
                   "train.monitor": "val_loss"})
    assert main(["train", *over]) == 0
    ck = tmp_path / "runs" / "avg" / "checkpoints"
    tops = sorted(ck.glob("epoch*.pt"))
    assert len(tops) == 3
    states = [torch.load(p, weights_only=True)["model"] for p in tops]
    avg = torch.load(ck / "averaged.pt", weights_only=True)
    bn_stats = [k for k in avg["model"] if k.endswith(("running_mean", "running_var"))]
    assert bn_stats
    for k, v in avg["model"].items():
        if v.is_floating_point() and k not in bn_stats:
            torch.testing.assert_close(v, sum(s[k] for s in states) / 3, rtol=1e-5, atol=1e-6)
    # BatchNorm statistics measured again for the averaged weights (a pass over the training part), not
    # the mean of three epochs' statistics
    assert all(not torch.allclose(avg["model"][k], sum(s[k] for s in states) / 3, rtol=1e-3) for k in bn_stats)
    assert avg["averaged_epochs"] == sorted(int(p.name[5:8]) for p in tops)
    summary = json.loads((tmp_path / "runs" / "avg" / "summary.json").read_text())
    assert summary["averaged"]["epochs"] == avg["averaged_epochs"] and 0 < summary["averaged"]["val_loss"]
    best = torch.load(ck / "best.pt", weights_only=True)
    # best.pt is the average exactly when it won on the monitored metric
    assert ("averaged_epochs" in best) == summary["averaged"]["best"]


def test_a_saturated_validation_keeps_the_tied_epoch_with_the_lower_val_loss(tiny, tmp_path, monkeypatch, caplog):
    """val_f1 1.000 at every epoch (a small or easy validation fold): best.pt is the epoch of the lowest
    val loss, not the first of the tie, and the log and summary say which epochs tied."""
    import logging

    from baseline import engine, train

    caplog.set_level(logging.INFO, logger="baseline")  # as the CLI logs: train.log gets INFO lines

    losses = iter([0.30, 0.10, 0.20, 0.15])
    monkeypatch.setattr(engine, "val_metrics", lambda logits, labels: {
        "val_loss": next(losses), "val_acc": 1.0, "val_f1": 1.0})
    summary = train.run(load_config(None, tiny(**{"train.epochs": 4, "run.name": "tie", "train.keep_top_k": 2})))
    assert summary["best_epoch"] == 2 and summary["best_tied_epochs"] == [1, 2, 3, 4]
    ckpts = tmp_path / "runs" / "tie" / "checkpoints"
    assert ckpt.load(ckpts / "best.pt")["epoch"] == 2
    assert sorted(p.name for p in ckpts.glob("epoch*.pt")) == ["epoch002.pt", "epoch004.pt"]
    assert "val_f1 1.0000 at epochs 1, 2, 3, 4: kept epoch 2 by val loss" in (ckpts.parent / "train.log").read_text()


def test_a_checkpoint_as_older_kits_wrote_it_reads_back_and_round_trips(tmp_path):
    """The file is a flat dict; one written before the Checkpoint type (with its unread `norm`, without
    phase, batch sizes or per-rank random states) reads back with what it has, and a Checkpoint writes
    the same keys it reads."""
    old = {"model": {"w": torch.ones(1)}, "model_ema": None, "optimizer": {"state": {}}, "scheduler": None,
           "scaler": None, "norm": {"mean": [0.5] * 3}, "epoch": 3, "step": 42, "best": 0.8, "best_epoch": 2,
           "rng": {"python": 1}, "config": {"train": {"batch_size": 16}}, "classes": ["a", "b"], "split_hash": "h",
           "versions": {"torch": "x"}, "top": [[0.8, "epoch002.pt"]]}
    torch.save(old, tmp_path / "last.pt")
    c = ckpt.read(tmp_path / "last.pt")
    assert (c.epoch, c.step, c.progress["best"], c.classes, c.split_hash) == (3, 42, 0.8, ["a", "b"], "h")
    assert c.phase == {} and c.rng_ranks == [] and c.batch_sizes is None and c.top == [[0.8, "epoch002.pt"]]
    assert c.provenance == {"versions": {"torch": "x"}} and torch.equal(ckpt.inference_weights(c)["w"], torch.ones(1))
    again = ckpt.Checkpoint.from_dict(c.to_dict())
    assert again.to_dict().keys() == c.to_dict().keys() and again.progress == c.progress
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ckpt.CheckpointError, match="not a baseline checkpoint"):
        ckpt.read(tmp_path / "other.pt")
