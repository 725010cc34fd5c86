"""`aug.on_device=true`: the training augmentation on whole uint8 batches, on the device the model runs on,
instead of per item in the loader. For a fast GPU whose CPU side cannot augment enough images per second
(`baseline bench loader` says how many workers that would take). Same kinds and ranges as
transforms.train_transform: flip, affine (shift 6%, scale 0.9-1.1, rotate 10 degrees, black border),
colour (brightness, contrast, saturation 0.2; no hue shift) and coarse dropout, each per image with its
aug.* probability. The draws come from a generator seeded by (seed, step), so a resumed run augments
what the uninterrupted one did, and no host sync is made.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugCfg


class BatchAug:
    def __init__(self, aug: AugCfg, seed: int):
        self.aug, self.seed = aug, seed

    def generator(self, device: torch.device, key: int) -> torch.Generator:
        return torch.Generator(device=device).manual_seed((self.seed * 1_000_003 + key) % 2**63)

    def __call__(self, x: torch.Tensor, key: int) -> torch.Tensor:
        """uint8 NCHW batch -> augmented float NCHW batch in 0..255, on x's device; `key`: the batch's
        place in the run (its step), which seeds the draws."""
        g = self.generator(x.device, key)
        x = x.float()
        a = self.aug
        if a.hflip > 0:
            x = torch.where(self._coin(x, a.hflip, g)[:, None, None, None], x.flip(3), x)
        if a.affine > 0:
            x = self._affine(x, self._coin(x, a.affine, g), g)
        if a.color > 0:
            x = self._color(x, self._coin(x, a.color, g), g)
        if a.dropout > 0:
            x = self._dropout(x, self._coin(x, a.dropout, g), g)
        return x

    @staticmethod
    def _coin(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
        return torch.rand(x.shape[0], device=x.device, generator=g) < p

    @staticmethod
    def _uniform(n: int, lo: float, hi: float, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=x.device, generator=g)

    def _affine(self, x: torch.Tensor, on: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        angle = self._uniform(n, -10, 10, x, g) * math.pi / 180
        scale = self._uniform(n, 0.9, 1.1, x, g)
        shift = self._uniform(2 * n, -0.06, 0.06, x, g).view(n, 2) * 2  # affine_grid's coordinates span 2
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale  # output -> input: the inverse map
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=x.device).expand(n, 2, 3)
        theta = torch.where(on[:, None, None], theta, eye)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _color(self, x: torch.Tensor, on: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        b, c, s = (self._uniform(n, 0.8, 1.2, x, g).where(on, torch.ones((), device=x.device)).view(n, 1, 1, 1)
                   for _ in range(3))
        x = x * b
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        x = (x - grey.mean((2, 3), keepdim=True)) * c + grey.mean((2, 3), keepdim=True)
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return ((x - grey) * s + grey).clamp_(0, 255)

    def _dropout(self, x: torch.Tensor, on: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        for hole in range(2):  # one or two holes, as num_holes_range=(1, 2)
            active = on if hole == 0 else on & self._coin(x, 0.5, g)
            hh = self._uniform(n, h / 8, h / 4, x, g)
            ww = self._uniform(n, w / 8, w / 4, x, g)
            y0 = self._uniform(n, 0, 1, x, g) * (h - hh)
            x0 = self._uniform(n, 0, 1, x, g) * (w - ww)
            rows = torch.arange(h, device=x.device)[None, :]
            cols = torch.arange(w, device=x.device)[None, :]
            in_rows = (rows >= y0[:, None]) & (rows < (y0 + hh)[:, None])
            in_cols = (cols >= x0[:, None]) & (cols < (x0 + ww)[:, None])
            hole_mask = (in_rows[:, :, None] & in_cols[:, None, :]) & active[:, None, None]
            x = x.masked_fill(hole_mask[:, None], 0.0)
        return x
