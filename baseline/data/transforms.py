"""albumentations pipelines from config. Images arrive decoded at training size (see dataset.py),
so the pipelines only augment; normalisation happens per batch on the device."""

from __future__ import annotations

import os

# albumentations asks PyPI for a newer release on import (2 s timeout, in every process and DDP
# rank); offline clusters and TLS-intercepting networks pay that and print a warning. Not ours to ask.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

from ..config import AugCfg


def train_transform(aug: AugCfg, hw: tuple[int, int]) -> A.Compose:
    h, w = hw
    # One image, no masks or boxes: the shape checks only cost time (about a quarter of the call).
    return A.Compose([
        A.HorizontalFlip(p=aug.hflip),
        A.Affine(translate_percent=(-0.06, 0.06), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=0, p=aug.affine),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=aug.color),
        A.CoarseDropout(num_holes_range=(1, 2), hole_height_range=(h // 8, h // 4),
                        hole_width_range=(w // 8, w // 4), p=aug.dropout),
    ], is_check_shapes=False)

