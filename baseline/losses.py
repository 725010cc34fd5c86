"""Losses: cross-entropy (+label smoothing), focal, soft macro-F1; optional class weights."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma, self.label_smoothing = gamma, label_smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target, weight=self.weight, reduction="none", label_smoothing=self.label_smoothing)
        pt = torch.exp(-F.cross_entropy(logits, target, reduction="none"))
        return ((1 - pt) ** self.gamma * ce).mean()


class SoftF1Loss(nn.Module):
    """1 - macro-F1 computed on softmax probabilities, so it is differentiable."""

    def __init__(self, num_classes: int, eps: float = 1e-7):
        super().__init__()
        self.num_classes, self.eps = num_classes, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 2:  # mixup/cutmix soft targets
            y = target
        else:
            y = F.one_hot(target, self.num_classes).float()
        p = logits.float().softmax(1)
        tp = (p * y).sum(0)
        precision = tp / (p.sum(0) + self.eps)
        recall = tp / (y.sum(0) + self.eps)
        f1 = 2 * precision * recall / (precision + recall + self.eps)
        return 1 - f1.mean()


class SoftTargetLoss(nn.Module):
    """Cross-entropy, or focal loss (gamma > 0), on soft targets (mixup / cutmix mix the labels), with class
    weights: on one-hot targets it equals the hard-label loss, so turning mixup on keeps focal and the weights."""

    def __init__(self, gamma: float = 0.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = logits.float().log_softmax(1)
        per = -target * logp
        if self.gamma:
            per = per * (1 - logp.exp()) ** self.gamma
        if self.weight is None:
            return per.sum(1).mean()
        per = per * self.weight
        if self.gamma:  # FocalLoss: a plain mean of the weighted terms
            return per.sum(1).mean()
        return per.sum() / (target * self.weight).sum()  # nn.CrossEntropyLoss's weighted mean


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse frequency, normalised to mean 1; absent classes get weight 0 (scikit-learn's
    compute_class_weight refuses a class with no examples, which a small fold can have)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def create(name: str, num_classes: int, label_smoothing: float = 0.0, weight: torch.Tensor | None = None,
           soft: bool = False) -> nn.Module:
    """The loss `name`; `soft`: for mixup / cutmix's soft targets (label smoothing is then in the targets)."""
    if soft and name != "f1":
        return SoftTargetLoss(gamma=2.0 if name == "focal" else 0.0, weight=weight)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(weight=weight, label_smoothing=label_smoothing)
    return SoftF1Loss(num_classes)
