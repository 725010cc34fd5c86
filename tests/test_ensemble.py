"""Ensembles from out-of-fold predictions: forward selection, per-class offsets, member checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from baseline.cli import main
from baseline.config import ConfigError
from baseline.submit import ensemble


def write_run(folder, probs, labels, split_hash="abc", fold=0, paths=None):
    (folder / "checkpoints").mkdir(parents=True)
    paths = paths or [f"img{i:03d}.png" for i in range(len(labels))]
    df = pd.DataFrame({"path": paths, "label": labels, "pred": np.asarray(probs).argmax(1)})
    df[[f"p{k}" for k in range(np.asarray(probs).shape[1])]] = np.asarray(probs)
    df.to_csv(folder / "oof.csv", index=False)
    (folder / "summary.json").write_text(json.dumps({"split_hash": split_hash, "fold": fold}))
    return folder


def onehot(pred, n, sure=0.8):
    p = np.full((len(pred), n), (1 - sure) / (n - 1))
    p[np.arange(len(pred)), pred] = sure
    return p


def test_forward_selection_finds_the_complementary_pair():
    labels = np.array([0, 1, 2, 0, 1, 2])
    right_first = onehot(np.array([0, 1, 2, 1, 2, 0]), 3, 0.6)  # right on the first half
    right_second = onehot(np.array([1, 2, 0, 0, 1, 2]), 3, 0.6)  # right on the second half
    # sure where right (first half), unsure where wrong: the pair averages to all six right
    right_first[3:] = [[0.45, 0.55, 0.0], [0.0, 0.45, 0.55], [0.55, 0.0, 0.45]]
    right_second[:3] = [[0.45, 0.55, 0.0], [0.0, 0.45, 0.55], [0.55, 0.0, 0.45]]
    noise = onehot(np.array([2, 2, 2, 2, 2, 2]), 3, 0.9)
    w = ensemble.forward_selection([right_first, noise, right_second], labels)
    assert w == pytest.approx([0.5, 0.0, 0.5])
    assert ensemble.macro_f1(labels, 0.5 * right_first + 0.5 * right_second) == 1.0


def test_a_mix_that_wins_on_held_out_folds_is_kept():
    n = 200
    labels = np.arange(n) % 2
    mine, theirs = (np.arange(n) % 4 < 2), (np.arange(n) % 4 >= 2)  # each member right on half the rows
    a, b = onehot(labels, 2, 0.9), onehot(labels, 2, 0.9)
    a[theirs] = onehot(1 - labels[theirs], 2, 0.6)  # wrong but unsure where the other is right and sure
    b[mine] = onehot(1 - labels[mine], 2, 0.6)
    part = np.arange(n) % 2 == 0  # both kinds of row in each half
    weights, gain = ensemble.held_out_weights(labels, [a, b], part)
    assert weights == pytest.approx([0.5, 0.5])
    assert gain > 0.4  # about 0.5 alone, 1.0 mixed


def test_a_mix_fitted_to_noise_falls_back_to_the_best_member():
    rng = np.random.default_rng(0)
    n = 120
    labels = rng.integers(0, 3, n)
    good = rng.dirichlet(np.ones(3), n)
    good[np.arange(n), labels] += 0.5
    good /= good.sum(1, keepdims=True)
    probs = [good] + [rng.dirichlet(np.ones(3), n) for _ in range(2)]
    assert np.count_nonzero(ensemble.forward_selection(probs, labels)) > 1  # in-sample, noise earns weight
    weights, gain = ensemble.held_out_weights(labels, probs, np.arange(n) % 2 == 0)
    assert gain < 0
    assert weights.tolist() == [1.0, 0.0, 0.0]


def test_offsets_lift_a_rare_class_and_the_gain_is_measured_on_untouched_rows():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 180 + [1] * 20)
    probs = np.column_stack([np.full(200, 0.6), np.full(200, 0.4)])
    probs[:180, 1] = rng.uniform(0.05, 0.3, 180)  # the model is shy of the rare class:
    probs[180:, 1] = rng.uniform(0.3, 0.45, 20)   # right ranking, wrong threshold
    probs[:, 0] = 1 - probs[:, 1]
    before = ensemble.macro_f1(labels, probs)
    off = ensemble.tune_offsets(labels, probs)
    assert ensemble.macro_f1(labels, probs, off) > before + 0.3
    part = np.arange(200) % 2 == 0
    assert ensemble.offsets_gain_held_out(labels, probs, part) > 0.3


def test_offsets_on_noise_gain_in_sample_but_not_held_out():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 120)
    probs = rng.dirichlet(np.ones(4), 120)
    tuned = ensemble.macro_f1(labels, probs, ensemble.tune_offsets(labels, probs))
    in_sample = tuned - ensemble.macro_f1(labels, probs)
    held_out = ensemble.offsets_gain_held_out(labels, probs, np.arange(120) % 2 == 0)
    assert in_sample > 0.05 and held_out < in_sample / 2


def test_members_on_other_split_files_are_refused_by_name(tmp_path):
    labels = np.array([0, 1, 0, 1])
    a = write_run(tmp_path / "a", onehot(labels, 2), labels)
    b = write_run(tmp_path / "b", onehot(labels, 2), labels, split_hash="other")
    with pytest.raises(ConfigError, match=f"'{b}' was trained on another split file"):
        ensemble.fit([str(a), str(b)])
    c = write_run(tmp_path / "c", onehot(labels, 2), labels, paths=["x", "y", "z", "w"])
    with pytest.raises(ConfigError, match="other validation images"):
        ensemble.fit([str(a), str(c)])


def test_members_validated_on_other_labels_are_refused_by_name(tmp_path):
    """One member trained with data.corrections, one without: their OOF labels differ, and weights fitted
    against the first one's labels would favour it."""
    labels = np.array([0, 1, 0, 1])
    a = write_run(tmp_path / "a", onehot(labels, 2), labels)
    b = write_run(tmp_path / "b", onehot(labels, 2), np.array([0, 1, 1, 1]))
    with pytest.raises(ConfigError, match=f"'{b}' was validated on other labels than '{a}' \\(1 of 4"):
        ensemble.fit([str(a), str(b)])


def test_experiment_folder_joins_its_folds_and_the_cli_writes_the_spec(tmp_path, capsys, monkeypatch):
    labels = np.array([0, 1, 2, 0, 1, 2])
    for k in range(2):
        rows = slice(3 * k, 3 * k + 3)
        write_run(tmp_path / "exp" / f"fold{k}", onehot(labels[rows], 3), labels[rows], fold=k,
                  paths=[f"img{i}.png" for i in range(6)][rows])
    write_run(tmp_path / "single", onehot(np.array([0, 0, 0, 0, 0, 0]), 3), labels,
              paths=[f"img{i}.png" for i in range(6)])
    monkeypatch.chdir(tmp_path)
    assert main(["ensemble", "exp", "single", "--name", "two", "--offsets"]) == 0
    spec = ensemble.read(tmp_path / "ensembles" / "two.yaml")
    assert [m["weight"] for m in spec["members"]] == [1.0, 0.0] and spec["oof_f1"] == 1.0
    assert len(spec["members"][0]["runs"]) == 2 and spec["oof_rows"] == 6
    assert "OOF macro-F1" in capsys.readouterr().out


def test_a_single_fold_members_halves_split_by_person_not_by_image():
    oof = pd.DataFrame({"fold": 0, "image": [f"p{i // 7}/{i % 7}.jpg" for i in range(70)],
                        "group": [f"p{i // 7}" for i in range(70)]})
    part = ensemble.halves(oof)
    per_person = pd.Series(part).groupby(oof["group"]).nunique()
    assert (per_person == 1).all()  # all seven photos of a person on one side
    assert 0 < part.sum() < 70


def test_offsets_tuned_without_tta_are_refused_with_tta(tmp_path):
    from baseline.config import load_config
    from baseline.submit.predict import check_offsets_match_tta

    spec = {"offsets": [0.0, 0.4]}
    check_offsets_match_tta(load_config(None, ["submit.tta=false"]), spec)
    check_offsets_match_tta(load_config(None, ["submit.tta=true"]), {"offsets": [0.0, 0.0]})  # none to misapply
    for over in (["submit.tta=true"], ["submit.tta_scales=[0.9,1.1]"]):
        with pytest.raises(ConfigError, match="offsets tuned on out-of-fold predictions made without TTA"):
            check_offsets_match_tta(load_config(None, over), spec)


def test_offsets_go_on_each_folds_mix_not_on_the_flatter_mean_of_the_folds():
    """Tuned on one model per image, offsets applied to the mean of two fold models would flip a decision
    that either model alone keeps: one fold is sure of class 0 (0.95), the other leans to 1 (0.65)."""
    from baseline.submit import predict

    folds = [np.array([[0.95, 0.05]]), np.array([[0.35, 0.65]])]
    offsets = [0.0, 0.7]
    flat = np.log(np.mean(folds, axis=0)) + offsets
    assert flat.argmax(1).tolist() == [1]  # what applying them to the mean did
    assert predict.with_offsets(folds, offsets).argmax(1).tolist() == [0]
    spec = {"members": [{"path": "a", "runs": ["a/fold0", "a/fold1"], "weight": 0.6},
                        {"path": "r", "runs": ["r/refit"], "weight": 0.4},
                        {"path": "z", "runs": ["z/fold0", "z/fold1"], "weight": 0.0}]}
    groups = predict.fold_groups(spec)
    assert [[str(p) for p in paths] for paths, _ in groups] == [
        ["a/fold0/checkpoints/best.pt", "r/refit/checkpoints/best.pt"],
        ["a/fold1/checkpoints/best.pt", "r/refit/checkpoints/best.pt"]] and groups[0][1] == [0.6, 0.4]
    spec["members"].append({"path": "b", "runs": ["b/fold0", "b/fold1", "b/fold2"], "weight": 0.1})
    with pytest.raises(ConfigError, match="another number of fold runs"):
        predict.fold_groups(spec)
