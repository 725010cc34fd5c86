"""Data-aware defaults: img_size from the aspect ratio, batch from the data size, warmup in steps;
and the recipe benchmark's tiny mode end to end."""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from baseline import cpus, defaults, models, phases, session, train
from baseline.bench import recipe
from baseline.cli import main
from baseline.config import get, load_config, walk
from baseline.config.schema import DECIDED_AT_SUBMIT


@pytest.mark.parametrize("sizes, side, expected", [
    ([(96, 128)] * 5, 64, (72, 56)),  # 3:4 portraits keep their shape at about 64x64 pixels
    ([(384, 512)] * 3, 64, (72, 56)),  # large photos are decoded down to the same shape
    ([(512, 384)] * 3, 64, (56, 72)),  # landscape
    ([(64, 64)] * 3, 64, (64, 64)),
    ([(8, 8)] * 3, 64, (32, 32)),  # tiny scans are not blown up past 32
    ([(40, 40)] * 3, 64, (40, 40)),  # never upsampled past the median image
    ([(384, 512)] * 3, 224, (256, 192)),  # a GPU's budget
    ([(96, 128), (96, 128), (1000, 100)], 64, (72, 56)),  # the median, not the mean, decides
])
def test_img_size_follows_the_median_aspect_ratio(sizes, side, expected):
    assert defaults.img_size_for(sizes, side) == expected


@pytest.mark.parametrize("n_train, world, device, expected", [
    (56, 1, "cpu", 16),  # a tiny set
    (336, 1, "cpu", 32),  # the floor: 10 steps per epoch
    (840, 1, "cpu", 32),  # 26 steps per epoch instead of 13 at 64
    (840, 1, "cuda", 32),
    (1920, 1, "cuda", 64),  # 30 steps at 64
    (1920, 1, "cpu", 32),  # on the CPU 64 is no faster per image: keep the steps
    (11200, 1, "cuda", 256),  # 43 steps at 256; memory may halve it (session.fit_data_batch)
    (60000, 1, "cuda", 256),  # the cap
    (11200, 4, "cuda", 64),
    (1344, 2, "cpu", 32),  # per process under DDP: 672 images each
    (600, 2, "cpu", 16),  # 300 per process: tiny
    (10, 1, "cpu", 10),  # never more than the data has
])
def test_batch_follows_the_data_size_and_device(n_train, world, device, expected):
    assert defaults.batch_for(n_train, world, torch.device(device)) == expected


def test_workers_are_zero_on_the_cpu():
    assert defaults.workers_for(torch.device("cpu"), 16) == 0
    assert defaults.workers_for(torch.device("cuda", 0), 16) == 8
    assert defaults.workers_for(torch.device("cuda", 0), 2) == 1


def test_resolve_says_why_and_keeps_explicit_values(tmp_path, caplog):
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (96, 128)).save(p)
        paths.append(str(p))
    cfg = load_config(None, ["model.name=resnet18"])  # no weights ship for it: from scratch
    with caplog.at_level(logging.INFO, logger="baseline"):
        out = defaults.resolve(cfg, paths, 840, torch.device("cpu"), 1, 2)
    assert out.data.img_size == [72, 56] and out.train.batch_size == 32 and out.data.num_workers == 0
    assert cfg.data.img_size == "auto"  # a copy: the caller's config is untouched
    text = caplog.text
    assert "batch_size=32 because 840 training images" in text and "96x128" in text
    assert out.data.mean == [0.485, 0.456, 0.406] and out.data.interpolation == "bilinear"  # resnet18, from scratch
    assert out.train.channels_last is True and "resnet18 is a conv net" in text
    fixed = load_config(None, ["model.name=resnet18", "model.pretrained=false", "data.img_size=48",
                               "train.batch_size=8", "data.num_workers=1", "data.mean=[0.5,.5,.5]",
                               "data.std=[0.5,0.5,0.5]", "data.interpolation=bicubic", "freeze.preset=none",
                               "data.age_edges=[30,60]", "train.sampler=shuffle", "train.channels_last=false",
                               "train.device=cpu", "train.amp=off", "train.async_save=true", "train.threads=3",
                               "data.cache=off", "log.wandb.mode=disabled"])
    assert defaults.resolve(fixed, paths, 840, torch.device("cpu"), 1, 2, ages=np.array([60] * 9)) == fixed


def test_resolve_leaves_no_auto_and_says_each_machine_key(tmp_path, caplog):
    paths = [str(tmp_path / "0.png")]
    Image.new("RGB", (96, 128)).save(paths[0])
    with caplog.at_level(logging.INFO, logger="baseline"):
        out = defaults.resolve(load_config(), paths, 840, torch.device("cpu"), 1, cpus.Share(4, 1.0, 1),
                               ages=np.array([60] * 9))
    autos = [k for k, _, _ in walk() if get(out, k) in ("auto", "data") and k not in DECIDED_AT_SUBMIT]
    assert autos == [], autos
    assert (out.train.device, out.train.amp, out.train.async_save, out.data.cache) == ("cpu", "off", False, "ram")
    assert out.train.threads == 3 and out.log.wandb.mode == "offline"  # 4 cores, 1 busy; no W&B key here
    assert "train.threads=3: 4 usable core(s), 1.0 busy" in caplog.text


def test_channels_last_auto_is_on_for_conv_nets_and_off_for_a_vit_on_the_cpu(tmp_path):
    img = tmp_path / "0.png"
    Image.new("RGB", (64, 64)).save(img)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for name, on_cpu in [("tf_efficientnet_lite0", True), ("test_resnet", True), ("vit_tiny_patch16_224", False)]:
        cfg = load_config(None, [f"model.name={name}", "model.pretrained=false", "data.img_size=64"])
        assert defaults.resolve(cfg, [str(img)], 840, cpu, 1, 2).train.channels_last is on_cpu, name
    vit = load_config(None, ["model.name=vit_tiny_patch16_224", "model.pretrained=false", "data.img_size=64"])
    assert models.wants_channels_last(models.shapes_only(vit.model, 2), gpu)  # a GPU's tensor cores want NHWC


def test_the_age_edge_and_balanced_sampling_follow_a_contest_shaped_data_set(tmp_path, caplog):
    img = tmp_path / "0.png"
    Image.new("RGB", (96, 128)).save(img)
    cfg = load_config(None, ["model.name=resnet18", "data.img_size=32"])

    def resolved(ages, c=cfg):
        return defaults.resolve(c, [str(img)], 840, torch.device("cpu"), 1, 2, ages=np.array(ages))

    contest = [20, 25, 41, 55, 58, 59] * 5 + [60] * 9 + [61]  # 9 of the 10 aged 60+ are exactly 60
    with caplog.at_level(logging.INFO, logger="baseline"):
        out = resolved(contest)
    assert out.data.age_edges == [30, 58] and out.train.sampler == "balanced" and out.train.sampler_power == 0.5
    assert "90% of the 10 people aged 60+ are exactly 60" in caplog.text
    for other in ([20, 45, 60, 64, 70, 75] * 5, [20, 30, 59] * 9):  # 60-75 (the built-in data); nobody 60+
        out = resolved(other)
        assert out.data.age_edges == [30, 60] and out.train.sampler == "shuffle"
    # a fold's training part of a small contest-like set, a correction having moved one of its 60s to 57:
    # still the contest's shape (a cv's folds, and a cv before and after corrections, keep one recipe)
    assert resolved([20, 25, 41, 55, 57, 58] * 5 + [60] * 3).train.sampler == "balanced"
    assert resolved([20, 25, 41, 55, 57, 58] * 5 + [60]).train.sampler == "shuffle"  # one: too few to tell
    csv = load_config(None, ["model.name=resnet18", "data.img_size=32", "data.format=csv"])
    assert resolved(contest, csv).train.sampler == "shuffle"  # no ages off the mask layout
    mine = load_config(None, ["model.name=resnet18", "data.img_size=32", "train.sampler=shuffle",
                              "data.age_edges=[30,59]"])
    out = resolved(contest, mine)
    assert out.train.sampler == "shuffle" and out.data.age_edges == [30, 59]  # a choice given is kept


def test_normalisation_follows_the_weights(tmp_path):
    paths = [str(tmp_path / "0.png")]
    Image.new("RGB", (64, 64)).save(paths[0])
    cfg = load_config(None, ["model.name=tf_efficientnet_lite0", "model.pretrained=w.pth"])
    out = defaults.resolve(cfg, paths, 840, torch.device("cpu"), 1, 2)
    assert out.data.mean == [0.5] * 3 and out.data.std == [0.5] * 3 and out.data.interpolation == "bicubic"
    assert out.freeze.preset == "fine_tune" and out.data.img_size == [64, 64]  # upsampled: pretrained
    scratch = defaults.resolve(load_config(None, ["model.name=tf_efficientnet_lite0", "model.pretrained=false"]),
                               paths, 840,
                               torch.device("cpu"), 1, 2)
    assert scratch.data.mean == [0.5] * 3 and scratch.data.interpolation == "bilinear"
    assert scratch.freeze.preset == "none" and scratch.data.img_size == [64, 64]


def test_the_default_model_fine_tunes_the_weights_the_lock_ships(tmp_path):
    paths = [str(tmp_path / "0.png")]
    Image.new("RGB", (96, 128)).save(paths[0])
    out = defaults.resolve(load_config(), paths, 840, torch.device("cpu"), 1, 2)
    assert out.model.name == "tf_efficientnet_lite0"
    assert out.model.pretrained.endswith("efficientnet-lite0-57934424.pth")
    assert out.freeze.preset == "fine_tune" and out.data.interpolation == "bicubic"
    other = defaults.resolve(load_config(None, ["model.name=convnext_atto"]), paths, 840, torch.device("cpu"), 1, 2)
    assert other.model.pretrained is False and other.freeze.preset == "none"


def test_exif_rotation_counts_in_the_aspect_ratio(tmp_path):
    p = tmp_path / "rot.jpg"
    im = Image.new("RGB", (128, 96))  # stored landscape, shown portrait
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(p, exif=exif)
    assert defaults.image_sizes([str(p)]) == [(96, 128)]


@pytest.mark.parametrize("steps_per_epoch", [3, 13, 100])
def test_warmup_is_a_share_of_all_optimizer_steps(steps_per_epoch):
    cfg = load_config(None, ["train.epochs=10", "sched.warmup=0.1"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = phases.make_scheduler(cfg, opt, steps_per_epoch)
    lrs = []
    for u in range(10 * steps_per_epoch + 1):
        sched.step_update(num_updates=u)
        lrs.append(opt.param_groups[0]["lr"])
    w = steps_per_epoch  # 10% of 10 epochs: one epoch of steps, whatever an epoch holds
    assert all(a < b for a, b in zip(lrs[:w], lrs[1:w]))  # rising through the warmup
    assert all(a >= b for a, b in zip(lrs[w:], lrs[w + 1:]))  # then only falling
    assert lrs[0] == pytest.approx(cfg.sched.min_lr)
    assert max(lrs) > 0.95 * cfg.optim.lr and lrs[-1] < cfg.optim.lr / 10


@pytest.mark.slow
def test_recipe_benchmark_tiny_mode(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(["bench", "recipe", "bench.tiny=true", "bench.seeds=2", f"bench.root={tmp_path / 'suite'}",
               f"bench.out={out}", "bench.sets=[synth_60,digits_csv,shapes_folder]", "model.name=test_resnet"])
    rows = pd.read_csv(out / "recipe_runs.csv")
    # a tiny run may miss the bar; the exit code says whether it did, and the table is complete either way
    t = pd.read_csv(out / "recipe.csv")
    assert rc == (0 if t["ok"].all() and t.kit_test.mean() >= t.ref_test.mean() else 1)
    assert rows["set"].tolist() == ["synth_60"] * 2 + ["digits_csv"] * 2 + ["shapes_folder"] * 2
    assert rows[["kit_f1", "ref_f1", "kit_test_f1", "ref_test_f1"]].notna().all().all()
    assert (rows.kit_s > 0).all() and (rows.ref_s > 0).all()
    assert rows.loc[rows.set == "digits_csv", "img_size"].tolist() == ["32x32"] * 2
    printed = capsys.readouterr().out
    assert "| synth_60 | 72x56 | 1 |" in printed and (out / "recipe.md").is_file()


def test_every_suite_set_has_a_labelled_test_part_that_training_never_reads(tmp_path):
    from baseline.data import suite
    from baseline.data.layouts import read_table

    for name in ("digits_csv", "shapes_folder", "synth_60"):
        ds = next(s for s in suite.SUITE if s.name == name)
        folder = suite.ensure(ds, tmp_path, div=8)
        cfg = load_config(None, [f"data.root={folder}", *[f"{k}={v}" for k, v in ds.overrides.items()]])
        table = read_table(cfg)
        paths, names = suite.test_part(folder, cfg.data.format)
        assert paths and all(Path(p).is_file() for p in paths)
        assert not set(paths) & set(table.df["path"])  # never a training image
        y = recipe.test_labels(names, table.classes, cfg.data.format)
        assert y.min() >= 0 and y.max() < len(table.classes) and len(set(y)) > 1


def test_the_reference_reports_the_lr_that_won_on_validation(tmp_path, monkeypatch):
    """Several LRs are tried; the row keeps the one with the best validation macro-F1 and its test score."""
    from baseline.data import suite

    ds = next(s for s in suite.SUITE if s.name == "digits_csv")
    folder = suite.ensure(ds, tmp_path / "suite", div=8)
    scores = {1e-3: 0.9, 2e-3: 0.7, 4e-3: 0.6, 8e-3: 0.5}
    real = recipe.reference
    monkeypatch.setattr(recipe, "reference", lambda *a: (scores[a[8]], real(*a[:6], 1, *a[7:])[1]))
    monkeypatch.setattr(recipe, "timed_kit", lambda cfg: (train.run(cfg), 1.0))
    row = recipe.one(ds, folder, 0, 1, tmp_path / "runs", ["model.name=test_resnet", "train.epochs=1"])
    assert row["ref_lr"] == 1e-3 and row["ref_f1"] == 0.9 and 0 <= row["ref_test_f1"] <= 1


@pytest.mark.slow
def test_pretrained_recipe_benchmark_tiny_mode(tmp_path, capsys):
    """Real ImageNet weights on both sides; 8x8 digits go in upsampled (pretrained features need it)."""
    out = tmp_path / "bench"
    rc = main(["bench", "recipe", "bench.pretrained=true", "bench.tiny=true", "bench.seeds=1",
               f"bench.root={tmp_path / 'suite'}", f"bench.out={out}", "bench.sets=[digits_csv]"])
    t = pd.read_csv(out / "pretrained.csv")
    assert rc == (0 if t["ok"].all() and t.kit_test.mean() >= t.ref_test.mean() else 1)
    rows = pd.read_csv(out / "pretrained_runs.csv")
    assert rows["set"].tolist() == ["digits_csv"] and rows.img_size.item() == "64x64"
    assert rows[["kit_f1", "ref_f1", "kit_test_f1", "ref_test_f1"]].notna().all().all()
    assert rows.kit_test_f1.item() > 0.3  # one head-only epoch on real features: far above chance (0.1)
    assert (out / "pretrained.md").is_file() and "reference test macro-F1" in capsys.readouterr().out


def test_table_puts_the_held_out_set_last_and_checks_the_bar():
    def row(name, seed, kit, ref, kit_s):
        return {"set": name, "seed": seed, "img_size": "72x56", "epochs": 8, "kit_batch": 16, "kit_f1": kit,
                "ref_f1": ref, "kit_test_f1": kit, "ref_test_f1": ref, "ref_lr": 1e-3, "kit_s": kit_s, "ref_s": 10}

    rows = pd.DataFrame([row("faces_c", 0, 0.9, 0.95, 10), row("synth_60", 0, 0.9, 0.905, 12),
                         row("synth_60", 1, 0.8, 0.805, 12)])
    t = recipe.table(rows)
    assert t["data set"].tolist() == ["synth_60", "faces_c (held out)"]
    assert t.ok.tolist() == [True, False]  # 0.85 vs 0.855 in 1.2x; 0.05 below
    assert t.time_ratio.iloc[0] == pytest.approx(1.2)
    assert "| mean | | | 0.875 | 0.902 | -0.027 |" in recipe.markdown(t)


@pytest.mark.slow
def test_contest_benchmark_tiny_mode_runs_every_switch_and_pipeline(tmp_path, capsys):
    out = tmp_path / "bench"
    from baseline.submit import ledger

    # one switch and one pipeline (the whole list is the same code, per name; make bench-contest runs it all;
    # refit and audit run there and in test_cv / test_audit, a cv each: too slow to repeat here)
    rc = main(["bench", "contest", "bench.tiny=true", "bench.seeds=1", f"bench.root={tmp_path / 'sets'}",
               f"bench.out={out}", "bench.sets=[contest_a,balanced,pseudo,pseudo_fields,pseudo_round2,person_vote,"
               "person_vote_gender,person_vote_auto,per_field]"])
    assert rc == 0
    rows = pd.read_csv(out / "contest" / "contest_runs.csv")
    switches = ["base", "balanced", "pseudo", "pseudo_fields", "pseudo_round2", "person_vote", "person_vote_gender",
                "person_vote_auto", "per_field"]
    assert rows["switch"].tolist() == switches and (rows.seconds > 0).all()
    tables = {sw: pd.read_csv(out / "contest" / "contest_a" / f"table_{sw}_s0.csv") for sw in switches[2:5]}
    assert all("round" in t.columns for t in tables.values())  # (tiny teachers keep few rows: test_pseudo counts)
    assert rows.set_index("switch").loc[switches[2:5], "pseudo_rows"].tolist() == [len(t) for t in tables.values()]
    truth = tmp_path / "sets" / "contest_a_30_v2" / "eval" / "truth.csv"
    for sw in switches:  # each score is its submission's, against the clean eval set
        sub = out / "contest" / "contest_a" / f"{sw}_s0.csv"
        assert rows.set_index("switch").eval_f1[sw] == pytest.approx(ledger.truth_score(sub, truth))
    voted = rows.set_index("switch").loc[["person_vote", "person_vote_gender"]]
    assert voted.purity_eval.between(0, 1).all() and voted.purity_oof.between(0, 1).all() and voted.voted.all()
    auto = rows.set_index("switch").loc["person_vote_auto"]  # votes exactly where the OOF check gained
    assert auto.voted == (auto.oof_gain > 0)
    assert "| contest_a | pseudo |" in capsys.readouterr().out
    before = (out / "contest" / "contest_a" / "runs_s0" / "base" / "summary.json").stat().st_mtime_ns
    assert main(["bench", "contest", "bench.tiny=true", "bench.seeds=1", f"bench.root={tmp_path / 'sets'}",
                 f"bench.out={out}", "bench.sets=[contest_a,person_vote]"]) == 0
    assert (out / "contest" / "contest_a" / "runs_s0" / "base" / "summary.json").stat().st_mtime_ns == before


def test_age_edges_and_sampler_auto_are_decided_by_the_training_part_alone():
    """Contest-shaped people (6 aged exactly 60) in the validation fold only say nothing to training; in
    the training part they turn both on."""
    from baseline import dist
    from baseline.data.layouts import Table

    ages = [60] * 6 + [61, 64, 67, 70, 72, 75] + [20, 40] * 6
    df = pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(ages))], "group": [str(i) for i in range(len(ages))],
                       "age": ages, "label": 0})
    cfg = load_config(None, ["model.name=test_resnet", "model.pretrained=false", "data.img_size=32",
                             "train.batch_size=4", "data.num_workers=0"])
    env = dist.Env()
    old_in_val = np.where(np.arange(len(ages)) < 6, 0, 1)  # the 60s are fold 0, the validation fold
    out = session.resolve_defaults(cfg, env, Table(df, ["a"]), old_in_val)
    assert out.data.age_edges == [30, 60] and out.train.sampler == "shuffle"
    old_in_train = np.where((np.arange(len(ages)) >= 6) & (np.arange(len(ages)) < 12), 0, 1)
    out = session.resolve_defaults(cfg, env, Table(df, ["a"]), old_in_train)
    assert out.data.age_edges == [30, 58] and out.train.sampler == "balanced"


def test_contest_benchmark_scores_the_audit_pipeline_against_its_own_first_cv():
    """The audit row's gain is over the cv it started from, not over `base`; its table puts the eval gain
    beside the CV gains like for like and overall."""
    from baseline.bench import contest as contest_bench

    rows = pd.DataFrame([
        {"set": "contest_a", "seed": s, "switch": "base", "eval_f1": 0.50, "seconds": 10} for s in (0, 1)] + [
        {"set": "contest_a", "seed": s, "switch": "audit", "eval_f1": 0.60 + d, "seconds": 30, "eval_before": 0.62,
         "eval_gain": d - 0.02, "cv_gain": 0.05, "cv_gain_like_for_like": -0.01 + d} for s, d in ((0, 0.0), (1, 0.02))])
    t = contest_bench.table(rows).set_index("switch")
    assert t.loc["audit", "gain"] == "-0.010 ± 0.010" and t.loc["base", "gain"] == "+0.000 ± 0.000"
    assert contest_bench.pipeline_table(rows).splitlines()[-1] == \
        "| contest_a | -0.010 ± 0.010 | +0.000 ± 0.010 | +0.050 ± 0.000 |"
