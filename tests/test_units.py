"""Unit tests for the small modules with no end-to-end cover of their own: losses against hand-computed
values, checkpoint RNG round-trip and top-k restore, dist.gather_rows on one process, the submission
check, and the plots."""

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from baseline import checkpoint as ckpt
from baseline import dist, losses, plots
from baseline.data import layouts
from baseline.data.layouts import DataError
from baseline.submit.predict import check_submission


# ---------------------------------------------------------------- losses
def test_focal_loss_matches_the_formula_by_hand():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    p1 = math.exp(2) / (math.exp(2) + 1)  # the true class's probability, first sample; 0.5 for the second
    expected = ((1 - p1) ** 2 * -math.log(p1) + 0.5 ** 2 * math.log(2)) / 2  # gamma = 2
    assert losses.create("focal", 2)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.087545, abs=1e-6)


def test_focal_with_gamma_0_is_cross_entropy():
    logits, target = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])
    focal = losses.FocalLoss(gamma=0.0)(logits, target)
    assert focal.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)


def test_soft_f1_is_0_when_confidently_right_and_half_when_undecided():
    target = torch.tensor([0, 1])
    f1 = losses.create("f1", 2)
    assert f1(torch.tensor([[20.0, -20.0], [-20.0, 20.0]]), target).item() == pytest.approx(0.0, abs=1e-6)
    # p = 0.5 everywhere: per class tp 0.5, predicted mass 1, true count 1 -> precision = recall = F1 = 0.5
    assert f1(torch.zeros(2, 2), target).item() == pytest.approx(0.5, abs=1e-6)
    soft = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # mixup's soft targets give the same answer
    assert f1(torch.zeros(2, 2), soft).item() == pytest.approx(0.5, abs=1e-6)


def test_class_weights_are_inverse_frequency_with_mean_1_and_0_for_absent_classes():
    w = losses.class_weights(np.array([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([0.5, 1.5, 0.0])


# ---------------------------------------------------------------- checkpoint
def test_rng_state_round_trips_python_numpy_and_torch():
    state = ckpt.rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_a_resumed_saver_keeps_evicting_in_top_k_order(tmp_path):
    saver = ckpt.Saver(tmp_path, "min", keep_top_k=2)
    for epoch, loss in enumerate([0.9, 0.5], start=1):
        saver.save(ckpt.Checkpoint(model={"w": torch.tensor([float(epoch)])}), epoch, loss, is_best=True)
    resumed = ckpt.Saver(tmp_path, "min", keep_top_k=2)
    resumed.restore(ckpt.load(tmp_path / "last.pt")["top"])
    resumed.save(ckpt.Checkpoint(model={"w": torch.tensor([3.0])}), 3, 0.7, is_best=False)
    assert [t[:2] for t in resumed.top] == [(0.5, "epoch002.pt"), (0.7, "epoch003.pt")]
    assert not (tmp_path / "epoch001.pt").exists() and (tmp_path / "epoch003.pt").exists()
    resumed.save_last(ckpt.Checkpoint(model={"w": torch.tensor([4.0])}))
    assert [t[:2] for t in ckpt.load(tmp_path / "last.pt")["top"]] == [[0.5, "epoch002.pt"], [0.7, "epoch003.pt"]]


def test_a_tie_on_the_metric_goes_to_the_lower_val_loss_in_best_and_top_k(tmp_path):
    saver = ckpt.Saver(tmp_path, "max", keep_top_k=2)
    assert saver.better(1.0, 1.0, 0.09, 0.13) and not saver.better(1.0, 1.0, 0.13, 0.09)
    assert saver.better(0.9, 0.8, 5.0, 0.1) and not saver.better(0.8, 0.9, 0.01, 5.0)  # the metric first
    for epoch, (f1, loss) in enumerate([(1.0, 0.136), (0.95, 0.11), (1.0, 0.087), (1.0, 0.101)], start=1):
        saver.save(ckpt.Checkpoint(model={"w": torch.tensor([float(epoch)])}), epoch, f1, is_best=False, loss=loss)
    assert [t[1] for t in saver.top] == ["epoch003.pt", "epoch004.pt"]  # the first of the tie is evicted


def test_a_saver_resumes_a_top_k_list_written_before_ties_were_broken(tmp_path):
    saver = ckpt.Saver(tmp_path, "max", keep_top_k=2)
    saver.restore([[0.9, "epoch001.pt"], [0.8, "epoch002.pt"]])  # the old checkpoints' (metric, name)
    saver.save(ckpt.Checkpoint(model={"w": torch.tensor([3.0])}), 3, 0.9, is_best=False, loss=0.2)
    assert [t[1] for t in saver.top] == ["epoch003.pt", "epoch001.pt"]  # the new entry wins the tie


# ---------------------------------------------------------------- dist
def test_gather_rows_on_one_process_returns_its_rows_unchanged():
    t = torch.arange(6).reshape(3, 2)
    assert torch.equal(dist.gather_rows(dist.Env(), t), t)
    assert dist.gather_rows(dist.Env(), torch.zeros((0, 4))).shape == (0, 4)


# ---------------------------------------------------------------- the submission check
def table(ids) -> layouts.TestTable:
    template = pd.DataFrame({"ImageID": ids, "ans": 0})
    return layouts.TestTable(
        df=pd.DataFrame({"path": ids, "id": ids}), template=template, id_col="ImageID", label_col="ans"
    )


@pytest.mark.parametrize(
    "sub, message",
    [
        (pd.DataFrame({"ImageID": ["a", "b"], "label": [1, 2]}), "columns"),
        (pd.DataFrame({"ImageID": ["b", "a"], "ans": [1, 2]}), "rows or order"),
        (pd.DataFrame({"ImageID": ["a"], "ans": [1]}), "rows or order"),
        (pd.DataFrame({"ImageID": ["a", "b"], "ans": [1, None]}), "empty labels"),
        (pd.DataFrame({"ImageID": ["a", "b"], "ans": [1, 18]}), "outside 0..17"),
    ],
)
def test_a_submission_unlike_the_template_is_refused(sub, message):
    with pytest.raises(DataError, match=message):
        check_submission(sub, table(["a", "b"]), 18, "mask")


def test_a_submission_like_the_template_passes():
    check_submission(pd.DataFrame({"ImageID": ["a", "b"], "ans": [0, 17]}), table(["a", "b"]), 18, "mask")


# ---------------------------------------------------------------- plots
def test_learning_curves_and_confusion_are_real_pictures(tmp_path):
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.7, 0.5],
            "val_loss": [1.1, 0.8, 0.7],
            "val_f1": [0.3, 0.5, 0.6],
            "val_acc": [0.4, 0.6, 0.7],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    plots.learning_curves(tmp_path / "m.csv", tmp_path / "curves.png")
    cm = plots.confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), ["a", "b", "c"], tmp_path / "cm.png")
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    for name in ("curves.png", "cm.png"):
        with Image.open(tmp_path / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


# ---------------------------------------------------------------- the factorized head
def test_factorized_head_is_the_product_of_three_heads_and_its_loss_their_sum():
    from baseline.config import ModelCfg
    from baseline.models import FactorizedHead, ModelError, create

    torch.manual_seed(0)
    head, x = FactorizedHead(8), torch.randn(5, 8)
    out = head(x)
    pm, pg, pa = (h(x).softmax(1) for h in (head.mask, head.gender, head.age))
    y = torch.tensor([0, 7, 11, 17, 9])
    m, g, a = y // 6, (y // 3) % 2, y % 3
    assert torch.allclose(out.softmax(1)[torch.arange(5), y], pm[torch.arange(5), m] * pg[torch.arange(5), g]
                          * pa[torch.arange(5), a], atol=1e-6)
    ce = torch.nn.functional.cross_entropy
    three = ce(head.mask(x), m) + ce(head.gender(x), g) + ce(head.age(x), a)
    assert ce(out, y).item() == pytest.approx(three.item(), rel=1e-5)

    model = create(ModelCfg(name="test_resnet", head="factorized"), 18)
    assert isinstance(model.get_classifier(), FactorizedHead) and model(torch.randn(2, 3, 32, 32)).shape == (2, 18)
    with pytest.raises(ModelError, match="18 classes"):
        create(ModelCfg(name="test_resnet", head="factorized"), 5)


def test_a_resumed_auto_batch_keeps_the_batch_its_checkpoint_trained_with():
    from baseline import session
    from baseline.config import load_config, to_dict

    cfg = load_config(None, ["train.batch_size=auto"])
    old = ckpt.Checkpoint(model={}, config=to_dict(cfg), batch_sizes={"world_size": 1, "batch_size_per_process": 24})
    assert session.trained_batch(cfg, old).train.batch_size == 24  # a checkpoint whose config says auto: no probe
    new = ckpt.Checkpoint(model={}, config=to_dict(load_config(None, ["train.batch_size=40"])))
    assert session.trained_batch(cfg, new).train.batch_size == 40
