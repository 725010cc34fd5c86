"""Training engine: exact resume, preemption, exact DDP metrics, top-k, OOM tools, recipes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pandas as pd
import pytest
import torch

from baseline import dist, engine, memory, models, phases, session
from baseline.cli import main
from baseline.config import load_config
from baseline.data.layouts import read_table
from baseline.data.split import load_or_write_folds
from baseline.submit.predict import load_model
from tests.conftest import tiny_overrides

METRICS = ["val_loss", "val_acc", "val_f1", "train_loss"]


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_for_rows(path, n, proc, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(pd.read_csv(path)) >= n:
            return
        assert proc.poll() is None, "training ended before it could be interrupted"
        time.sleep(0.05)
    raise TimeoutError(path)


def train_until_first_epoch(over, metrics_csv, **popen):
    """Start `baseline train` in a child process; return it once its first epoch is logged."""
    proc = subprocess.Popen([sys.executable, "-m", "baseline", "train", *over], env=clean_env(), **popen)
    wait_for_rows(metrics_csv, 1, proc)
    return proc


@pytest.mark.slow
def test_kill9_then_resume_matches_uninterrupted_run(synth_root, tmp_path):
    runs = tmp_path / "runs"
    # threads pinned: float sums differ with the thread count, and auto counts the cores other tests keep busy
    common = {"train.epochs": 3, "data.num_workers": 0, "train.threads": 2}
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "full"}, **common)]) == 0

    over = tiny_overrides(synth_root, runs, **{"run.name": "cut"}, **common)
    proc = train_until_first_epoch(over, runs / "cut" / "metrics.csv",
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(pd.read_csv(runs / "cut" / "metrics.csv"))
    assert done < 3, "the run finished before the kill; make the epochs longer"
    assert main(["train", *over, "run.resume=auto"]) == 0

    full = pd.read_csv(runs / "full" / "metrics.csv")
    cut = pd.read_csv(runs / "cut" / "metrics.csv")
    assert cut.epoch.tolist() == [1, 2, 3]  # no epoch twice, wherever the kill landed
    np.testing.assert_allclose(cut[METRICS].to_numpy(), full[METRICS].to_numpy(), rtol=0, atol=1e-6)
    a = torch.load(runs / "full" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(runs / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.slow
def test_sigterm_finishes_the_step_writes_last_and_resumes_exactly(synth_root, tmp_path):
    runs = tmp_path / "runs"
    common = {"train.epochs": 4, "train.batch_size": 8, "train.threads": 2}  # pinned: as above
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "whole"}, **common)]) == 0
    over = tiny_overrides(synth_root, runs, **{"run.name": "term"}, **common)
    proc = train_until_first_epoch(over, runs / "term" / "metrics.csv",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "stopped by SIGTERM" in err and "run.resume=auto" in err, err[-2000:]
    assert "Traceback" not in err
    saved = torch.load(runs / "term" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["batches_done"] > 0 and saved["epoch"] < 4  # stopped inside an epoch, its steps kept

    assert main(["train", *over, "run.resume=auto"]) == 0
    whole = pd.read_csv(runs / "whole" / "metrics.csv")
    term = pd.read_csv(runs / "term" / "metrics.csv")
    assert term.epoch.tolist() == [1, 2, 3, 4]
    val = ["val_loss", "val_acc", "val_f1"]
    np.testing.assert_allclose(term[val].to_numpy(), whole[val].to_numpy(), rtol=0, atol=1e-6)


BALANCED_DRAW = """
import json, sys
from pathlib import Path

from baseline import dist, session
from baseline.config import load_config
from baseline.data.layouts import read_table
from baseline.data.split import load_or_write_folds

with dist.session("cpu") as env:
    cfg = load_config(None, sys.argv[2:])
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    data = session.build_loaders(cfg, env, *session.build_datasets(cfg, table, fold, session.Images(None)), 8)
    data.train.sampler.set_epoch(2)
    draws = dist.gather_objects(env, [int(i) for i, _ in data.train.sampler])
    if env.is_main:
        Path(sys.argv[1]).write_text(json.dumps({"draws": draws, "labels": list(map(int, data.train.dataset.labels))}))
"""


@pytest.mark.slow
def test_the_balanced_sampler_under_torchrun_splits_one_process_draw_between_two(synth_root, tmp_path):
    """Two real processes (torchrun, gloo) build the training loader as a run does: their shares are
    disjoint positions of the very draw one process makes, so every rank trains on its part of one
    class-balanced epoch."""
    script = tmp_path / "draw.py"
    script.write_text(BALANCED_DRAW)
    over = tiny_overrides(synth_root, tmp_path / "runs", **{"train.sampler": "balanced", "train.sampler_power": 1.0,
                                                             "data.age_edges": "[30,60]"})
    for n in (1, 2):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                            str(script), str(tmp_path / f"draw{n}.json"), *over], capture_output=True, text=True,
                           env=clean_env(), timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    (one,), (a, b) = (json.loads((tmp_path / f"draw{n}.json").read_text())["draws"] for n in (1, 2))
    assert len(a) == len(b) == len(one) // 2
    assert [x for pair in zip(a, b) for x in pair] == one  # position by position: one draw, split
    labels = np.asarray(json.loads((tmp_path / "draw1.json").read_text())["labels"])
    counts = np.bincount(labels[one], minlength=18)[np.unique(labels)]
    assert counts.max() < 3 * counts.min(), counts  # balanced: every present class about as often


@pytest.mark.slow
def test_nproc_2_relaunches_under_torchrun_and_evaluates_exactly_like_one_process(synth_root, tmp_path):
    runs = tmp_path / "runs"
    # 70 validation images do not divide into 2 x batch 8: padding would double-count some.
    over = tiny_overrides(synth_root, runs, **{"run.name": "ddp", "train.batch_size": 8, "log.tensorboard": "true",
                                               "train.log_interval": 2, "train.log_every_s": 0, "log.figures": True})
    r = subprocess.run([sys.executable, "-m", "baseline", "train", "--nproc", "2", *over], capture_output=True,
                       text=True, env=clean_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "8 per process x 2 processes x 1 accumulation = 16 global" in r.stdout
    summary = json.loads((runs / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 16 and summary["batch_size_per_process"] == 8
    # not a terminal: progress lines (rank 0 only), no progress bar's carriage returns anywhere
    assert "\r" not in r.stdout + r.stderr and "\r" not in (runs / "ddp" / "train.log").read_text()
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("epoch 1/1  step ")]
    # 70 images per rank / 8: 9 steps, every 2nd; the ETA of the epoch and of the whole run
    assert len(steps) == 4 and "img/s  ETA epoch 0:00:" in steps[0] and ", run 0:" in steps[0], r.stdout
    # rank 0 alone writes: one TensorBoard event file (a second writer would add its own), every picture
    assert len(list((runs / "ddp" / "tb").glob("events.out.tfevents.*"))) == 1
    for png in ("learning_curves", "confusion_matrix", "per_class_f1", "worst_predictions"):
        assert (runs / "ddp" / f"{png}.png").is_file()
    row = pd.read_csv(runs / "ddp" / "metrics.csv").iloc[-1]

    cfg = load_config(None, [*over, "data.age_edges=[30,60]", "train.sampler=shuffle"])  # as resolved here
    env = dist.Env()
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    cache = session.decode_images(cfg, table)
    data = session.build_loaders(cfg, env, *session.build_datasets(cfg, table, fold, cache), 8)
    model, _, _ = load_model(runs / "ddp" / "checkpoints" / "last.pt", env.device)
    mean, std = models.data_stats(model)
    ctx = engine.StepCtx(env, torch.tensor(mean), torch.tensor(std))
    single = engine.val_metrics(engine.predict_logits(model, data.val, ctx), data.val_labels)
    assert len(pd.read_csv(runs / "ddp" / "oof.csv")) == (fold == 0).sum() == len(data.val_labels)
    for k in ("val_acc", "val_f1"):
        assert row[k] == pytest.approx(single[k], abs=1e-9)
    assert row["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_top_k_keeps_the_best_epochs(synth_root, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{
        "run.name": "k", "train.epochs": 3, "train.keep_top_k": 2, "train.monitor": "val_loss"})]) == 0
    m = pd.read_csv(runs / "k" / "metrics.csv")
    best2 = sorted(m.nsmallest(2, "val_loss").epoch.tolist())
    kept = sorted(int(p.stem[5:]) for p in (runs / "k" / "checkpoints").glob("epoch*.pt"))
    assert kept == best2
    best = torch.load(runs / "k" / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_epoch"] == int(m.loc[m.val_loss.idxmin(), "epoch"])


@pytest.mark.slow
def test_batch_size_auto_is_bounded_and_used(synth_root, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{
        "run.name": "auto", "train.batch_size": "auto", "train.max_batch_size": 24})]) == 0
    log = (runs / "auto" / "train.log").read_text()
    assert "train.batch_size=auto: 24 per process" in log


def test_cpu_budget_bounds_the_batch():
    assert memory.cpu_budget_batches((64, 64), 1.0) == 128
    assert memory.cpu_budget_batches((512, 512), 0.001) == 1


@pytest.mark.slow
def test_memory_does_not_grow_across_epochs(synth_root, tmp_path):
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "mem", "train.epochs": 5})]) == 0
    rss = pd.read_csv(runs / "mem" / "metrics.csv").mem_rss_mb
    assert rss.iloc[-1] - rss.iloc[1] < 50, rss.tolist()  # MiB; epoch 1 pays the one-time allocations


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    {"train.ema": 0.9},
    {"train.mixup": 0.2, "train.cutmix": 1.0},
    {"train.loss": "focal", "train.class_weights": True},
    {"train.loss": "f1"},
    {"train.accum_steps": 2, "train.clip_grad": 1.0, "train.label_smoothing": 0.1},
    {"sched.name": "step", "sched.step_epochs": 1, "optim.name": "sgd"},
    {"sched.name": "plateau", "train.early_stop": 1, "train.epochs": 3},
    {"train.channels_last": True},
    {"train.sampler": "balanced", "train.sampler_power": 0.5},
    {"train.cutmix_same_class": 0.5, "train.loss": "focal"},
])
def test_recipes_train(synth_root, tmp_path, extra):
    runs = tmp_path / "runs"
    assert main(["train", *tiny_overrides(synth_root, runs, **{"run.name": "r", **extra})]) == 0
    m = pd.read_csv(runs / "r" / "metrics.csv")
    assert np.isfinite(m.train_loss).all() and m.val_f1.between(0, 1).all()
    saved = torch.load(runs / "r" / "checkpoints" / "last.pt", weights_only=True)
    if "train.ema" in extra:
        assert saved["model_ema"] is not None
        assert not torch.equal(saved["model_ema"]["conv1.0.weight"], saved["model"]["conv1.0.weight"])
    if "sched.name" in extra and extra["sched.name"] == "step":
        assert m.lr.iloc[-1] < 0.005
    if "train.sampler" in extra:  # the balanced draw has the shuffle's length: 140 images / 16 = 8 steps
        assert m.step.tolist() == [8] and saved["config"]["train"]["sampler"] == "balanced"
    if "train.accum_steps" in extra:  # 140 images / batch 16 = 8 batches: 4 optimizer steps, not 8
        assert m.step.tolist() == [4] and saved["config"]["train"]["clip_grad"] == 1.0
    if extra.get("train.early_stop"):  # patience 1: the run stops the epoch after one without progress
        best = m.val_f1.cummax()
        stalled = [e for e in range(1, len(m)) if m.val_f1.iloc[e] <= best.iloc[e - 1]]
        assert len(m) == (stalled[0] + 1 if stalled else 3), m


def test_oom_message_says_what_to_try():
    msg = memory.oom_message(torch.device("cpu"), 256, "in epoch 3 after step 10")
    assert "train.batch_size=256" in msg and "accum_steps" in msg and "epoch 3" in msg


@pytest.mark.slow
def test_gpu_check_runs_in_tiny_mode_on_the_cpu(synth_root, capsys):
    from baseline.cli import main

    assert main(["bench", "gpu", "bench.tiny=true", f"data.root={synth_root}", "split.folds=3"]) == 0
    rows = dict(line.split("  ", 1) for line in capsys.readouterr().out.splitlines() if "  " in line)
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    kit, limit = re.fullmatch(r"kit ([\d.]+) / limit ([\d.]+).*", rows["train img/s, eager"]).groups()
    assert float(kit) > 0 and float(limit) > 0
    assert float(re.search(r"[\d.]+", rows["inference img/s, eager"]).group()) > 0
    assert int(rows["batch_size=auto"]) >= 1  # the kit's own probe settled on a batch
    assert rows["forced OOM"] == "n/a (needs a GPU)" and rows["device"].startswith("cpu")


def sgd_learner(accum: int) -> engine.Learner:
    """A 12-weight linear model under plain SGD: its update is -lr times the gradient, nothing else."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    ctx = engine.StepCtx(dist.Env(), torch.zeros(3), torch.ones(3), accum_steps=accum)
    fixed = types.SimpleNamespace(optimizer=torch.optim.SGD(model.parameters(), lr=1e-4), view=model,
                                  after_step=lambda step: None)  # one phase, no schedule
    return engine.Learner(model, ctx, torch.nn.CrossEntropyLoss(), freezer=None, phases=fixed)


def test_a_short_last_accumulation_group_is_averaged_over_its_own_batches():
    x, y = torch.randint(0, 255, (4, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    learner = sgd_learner(accum=2)
    w = [learner.model[1].weight.detach().clone()]
    steps = []

    def record(_):
        w.append(learner.model[1].weight.detach().clone())

    # 3 identical batches at accum 2: one step over two, then one over the last alone
    orig = engine.optimizer_step
    try:
        engine.optimizer_step = lambda lr, st: (orig(lr, st), record(None), steps.append(st))[0]
        engine.train_one_epoch(learner, [(x, y)] * 3, 0)
    finally:
        engine.optimizer_step = orig
    first, last = w[1] - w[0], w[2] - w[1]
    assert len(steps) == 2
    # the same gradient (lr is tiny): the short group's step is as large, not half as large
    torch.testing.assert_close(last, first, rtol=0.02, atol=1e-9)


def test_ema_warms_up_so_the_random_start_does_not_stay_in_the_evaluated_weights(synth_root):
    from baseline.data.layouts import Table

    cfg = load_config(None, [f"data.root={synth_root}", "model.name=test_resnet", "train.ema=0.999",
                             "model.pretrained=false"])
    table = Table(pd.DataFrame({"label": [0, 1]}), ["a", "b"])
    learner = session.build_learner(cfg, dist.Env(), table, stop=lambda step: False)
    start = {k: v.clone() for k, v in learner.ema.module.state_dict().items()}
    for step in range(1, 201):  # the model moves away from its start; the EMA should follow
        with torch.no_grad():
            for p in learner.model.parameters():
                p.add_(0.01)
        learner.ema.update(learner.model, step=step)
    k = "fc.weight" if "fc.weight" in start else next(n for n in start if n.endswith("weight"))
    moved = (learner.ema.module.state_dict()[k] - start[k]).mean().item()
    # 200 steps of +0.01: the model moved 2.0; at a fixed 0.999 the EMA moves ~0.2, warmed up most of the way
    assert moved > 1.5, moved


def test_mixup_keeps_focal_loss_and_class_weights(synth_root):
    labels = np.array([0, 0, 0, 1, 2, 2])
    for loss in ("ce", "focal"):
        over = [f"data.root={synth_root}", f"train.loss={loss}", "train.class_weights=true", "train.label_smoothing=0"]
        hard = session.build_loss(load_config(None, over), labels, 3, torch.device("cpu"))
        soft = session.build_loss(load_config(None, [*over, "train.mixup=0.2"]), labels, 3, torch.device("cpu"))
        logits, y = torch.randn(8, 3), torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
        torch.testing.assert_close(soft(logits, torch.nn.functional.one_hot(y, 3).float()), hard(logits, y))


def test_class_weights_come_from_the_training_fold_alone(synth_root):
    cfg = load_config(None, [f"data.root={synth_root}", "train.class_weights=true"])
    loss = session.build_loss(cfg, np.array([0, 0, 0, 1]), 2, torch.device("cpu"))
    torch.testing.assert_close(loss.weight, torch.tensor([0.5, 1.5]))  # 1/3 and 1/1, normalised to mean 1


def test_clipping_bounds_the_update_and_channels_last_reaches_weights_and_batches(synth_root):
    x, y = torch.randint(0, 255, (4, 3, 2, 2), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    learner = sgd_learner(accum=1)
    learner.ctx.clip_grad = 1e-3
    learner.optimizer.param_groups[0]["lr"] = 1.0
    before = [p.detach().clone() for p in learner.model.parameters()]
    engine.train_one_epoch(learner, [(x, y)], 0)
    moved = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(learner.model.parameters(), before)))
    assert 0.9e-3 < moved <= 1e-3 * 1.001  # lr x clip: the gradient norm was cut to 1e-3

    from baseline.data.layouts import Table

    for value in ("true", "auto"):  # auto: a conv net on the CPU is faster channels_last
        cfg = load_config(None, [f"data.root={synth_root}", "model.name=test_resnet",
                                 f"train.channels_last={value}", "model.pretrained=false"])
        learner = session.build_learner(cfg, dist.Env(), Table(pd.DataFrame({"label": [0, 1]}), ["a", "b"]),
                                      stop=lambda step: False)
        conv = next(p for p in learner.model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last)
        xb, _ = learner.ctx.batch(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2))
        assert xb.is_contiguous(memory_format=torch.channels_last) and not xb.is_contiguous()


@pytest.mark.slow
def test_lr_find_suggests_an_lr_and_leaves_the_run_folder_alone(synth_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    over = tiny_overrides(synth_root, runs, **{"run.name": "x"})
    assert main(["train", *over]) == 0
    before = {p: p.stat().st_mtime_ns for p in (runs / "x").rglob("*") if p.is_file()}
    assert main(["lr-find", *over, "lrfind.steps=40", "lrfind.start=1e-5", "lrfind.end=10"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (runs / "x").rglob("*") if p.is_file()} == before
    rows = pd.read_csv(runs / "lr-find" / "x" / "lr_find.csv")
    assert (runs / "lr-find" / "x" / "lr_find.png").is_file()
    assert rows.lr.is_monotonic_increasing and rows.lr.iloc[0] == pytest.approx(1e-5)
    assert rows.smoothed.min() < rows.smoothed.iloc[0]  # the loss fell somewhere in the range
    out = capsys.readouterr().out
    lr = float(out.split("suggested optim.lr=")[1].split()[0])
    assert 1e-6 <= lr <= 1.0


def test_grad_checkpointing_reaches_the_model_and_still_trains(synth_root):
    from baseline.data.layouts import Table

    table = Table(pd.DataFrame({"label": [0, 1]}), ["a", "b"])
    cfg = load_config(None, [f"data.root={synth_root}", "model.name=test_resnet", "train.grad_checkpointing=true",
                             "model.pretrained=false"])
    learner = session.build_learner(cfg, dist.Env(), table, stop=lambda step: False)
    assert learner.model.grad_checkpointing is True
    learner.phases = phases.Phases(cfg, learner.freezer, learner.model, dist.Env(), steps_per_epoch=1)
    learner.phases.enter(0)
    x, y = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    w = next(learner.model.parameters()).detach().clone()
    engine.train_one_epoch(learner, [(x, y)], 0)
    assert not torch.equal(w, next(learner.model.parameters()))


def test_cutmix_within_a_class_joins_halves_of_one_class_and_keeps_the_labels():
    torch.manual_seed(0)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 1, 1])
    x = torch.arange(8).view(8, 1, 1, 1).float().expand(8, 3, 4, 6).clone()  # image i is filled with i
    x2, y2 = engine.SameClassCutMix(1.0)(x, y)
    assert torch.equal(y2, y) and torch.equal(x2[..., :3], x[..., :3])  # left halves and labels untouched
    partner = x2[:, 0, 0, 3:].mean(1).long()  # whose right half each image now has
    assert (y[partner] == y).all()  # always a right half of its own class
    assert (partner != torch.arange(8))[y != 2].all()  # every image with a classmate got one's half
    assert partner[3] == 3
    same, _ = engine.SameClassCutMix(0.0)(x, y)
    assert torch.equal(same, x)
