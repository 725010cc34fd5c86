"""Contest-like data sets (competition layout): what made the real mask contest hard, drawn on purpose.

- Ages 18-60 as in the contest: many people in their fifties, few at exactly 60 (the whole >=60 class),
  and an age cue that grows continuously (hair greys and forehead lines deepen year by year), so 57-59
  look almost like 60 and the bucket edge is a judgement call.
- 3% of the people with a wrong gender or age in train.csv and their folder name (synth.inject_label_errors),
  as the contest had; the eval set is clean.
- 384x512 portraits, faces at varying scale and position on cluttered backgrounds; a person's seven photos
  share one scene (their background and where they stand, moved a little per photo), as selfies do.
- Beside the layout, what no contest gives but the kit's own checks use: each eval image's person
  (eval/people.csv, for person grouping's purity) and every face's true box (faces.csv, for data.crop=face).

Three styles (`contest_a`, `contest_b`, `contest_c`), which differ in palette, clutter and face layout;
`contest_c` is held out from all tuning (bench.contest reports it last)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .competition import STEMS, age_bucket, mask_of
from .synth import MASKS, RACES, SKINS, _jitter, _write_csv, inject_label_errors

VERSION = 2  # 2: 384x512 photos, one scene per person, faces.csv and eval/people.csv (1: 96x128, a scene a photo)
W, H = 384, 512  # the contest's portrait photos
Z = W / 96  # the styles' sizes are in a 96x128 frame
STYLES = {  # clutter shapes, face scale range, how far the face wanders, hair palette (young -> old)
    "contest_a": {"clutter": 6, "scale": (0.7, 1.1), "shift": 16, "young": (40, 28, 20), "old": (235, 235, 235)},
    "contest_b": {"clutter": 12, "scale": (0.6, 1.0), "shift": 22, "young": (90, 60, 30), "old": (210, 215, 225)},
    "contest_c": {"clutter": 9, "scale": (0.65, 1.05), "shift": 19, "young": (20, 20, 35), "old": (225, 220, 210)},
}


def contest_age(rng: np.random.Generator) -> int:
    """18-29: 45%; 30-59: 48%, half of them 50-59; exactly 60: 7%."""
    u = rng.random()
    if u < 0.45:
        return int(rng.integers(18, 30))
    if u < 0.69:
        return int(rng.integers(30, 50))
    if u < 0.93:
        return int(rng.integers(50, 60))
    return 60


def draw_scene(rng: np.random.Generator, style: dict) -> dict:
    """Where one person takes their seven photos: a background colour, its clutter and where the face sits.
    Real entries are a person's selfies in one place; each photo moves the face a little (draw_contest_face)."""
    clutter = []
    for _ in range(style["clutter"]):  # random boxes and blobs
        x, y = rng.integers(-10, 96), rng.integers(-10, 128)
        w, h = rng.integers(8, 40, size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        clutter.append(([float(v) * Z for v in (x, y, x + w, y + h)], colour, bool(rng.random() < 0.5)))
    shift = style["shift"] * Z
    return {"bg": tuple(int(v) for v in rng.integers(40, 220, size=3)), "clutter": clutter,
            "scale": rng.uniform(*style["scale"]) * Z,
            "centre": (W / 2 + rng.uniform(-shift, shift), H / 2 + rng.uniform(-shift, shift))}


def draw_contest_face(rng: np.random.Generator, style: dict, female: bool, age: int, mask: int,
                      skin: tuple, scene: dict | None = None) -> tuple[Image.Image, tuple]:
    """One photo of a person in `scene` (a new one when None) and the face's box (x0, y0, x1, y1) as
    fractions of the photo. The age cue is continuous: hair colour interpolates from young to old between
    18 and 60, and 0-5 forehead lines fade in across the same years."""
    scene = scene or draw_scene(rng, style)
    img = Image.new("RGB", (W, H), scene["bg"])
    d = ImageDraw.Draw(img)
    for box, col, square in scene["clutter"]:
        (d.rectangle if square else d.ellipse)(box, fill=col)
    s = scene["scale"] * rng.uniform(0.95, 1.05)
    cx, cy = (c + rng.uniform(-3, 3) * Z for c in scene["centre"])
    fw, fh = 30 * s, 40 * s
    t = float(np.clip((age - 18) / 42, 0, 1))
    hair = _jitter(rng, tuple(int(a + (b - a) * t) for a, b in zip(style["young"], style["old"])), 14)
    if female:
        d.rectangle([cx - fw - 8 * s, cy - fh * 0.6, cx + fw + 8 * s, cy + fh + 18 * s], fill=hair)
    d.ellipse([cx - fw - 6 * s, cy - fh - 8 * s, cx + fw + 6 * s, cy + fh * 0.2], fill=hair)
    d.ellipse([cx - fw, cy - fh * 0.75, cx + fw, cy + fh], fill=_jitter(rng, skin, 10))
    lines = t * 5
    for k in range(int(np.ceil(lines))):  # forehead lines, the last one partly faded in
        strength = min(1.0, lines - k)
        y = cy - fh * 0.55 + k * 3 * s
        col = tuple(int(c * (1 - 0.5 * strength)) for c in skin)
        d.line([cx - fw * 0.45, y, cx + fw * 0.45, y], fill=col, width=max(1, round(s)))
    eye_y = cy - fh * 0.2
    for ex in (cx - fw * 0.4, cx + fw * 0.4):
        d.ellipse([ex - 4 * s, eye_y - 3 * s, ex + 4 * s, eye_y + 3 * s], fill=(20, 20, 20))
    nose_y = cy + fh * 0.15
    d.polygon([(cx, nose_y - 8 * s), (cx - 5 * s, nose_y + 3 * s), (cx + 5 * s, nose_y + 3 * s)], fill=(110, 60, 50))
    d.rectangle([cx - 10 * s, cy + fh * 0.5 - 2 * s, cx + 10 * s, cy + fh * 0.5 + 3 * s], fill=(190, 40, 50))
    colour = _jitter(rng, MASKS[rng.integers(len(MASKS))], 12)
    if mask == 0:
        d.rounded_rectangle([cx - fw * 0.95, nose_y - 10 * s, cx + fw * 0.95, cy + fh * 0.9], 6 * Z, fill=colour)
    elif mask == 1:
        d.rounded_rectangle([cx - fw * 0.9, nose_y + 6 * s, cx + fw * 0.9, cy + fh * 1.05], 6 * Z, fill=colour)
    box = ((cx - fw) / W, (cy - fh * 0.75) / H, (cx + fw) / W, (cy + fh) / H)
    return img.rotate(rng.uniform(-8, 8), resample=Image.BILINEAR, fillcolor=scene["bg"]), box


def write_contest(root: str | Path, style: str, people: int = 150, seed: int = 0, wrong: float = 0.03) -> Path:
    """A contest-like set under `root`: train (with `wrong` of the people mislabelled; train/injected.csv
    says who) and a clean eval with truth.csv (eval people : train people = 2 : 3)."""
    root, look = Path(root), STYLES[style]
    rng = np.random.default_rng(seed)
    img_dir = root / "train" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows, faces = [], []
    for i in range(people):
        female, age, skin = bool(rng.integers(2)), contest_age(rng), SKINS[rng.integers(len(SKINS))]
        gender, race = ("female" if female else "male"), RACES[rng.integers(len(RACES))]
        folder = f"{i + 1:06d}_{gender}_{race}_{age}"
        (img_dir / folder).mkdir(exist_ok=True)
        scene = draw_scene(rng, look)
        for stem in STEMS:
            img, box = draw_contest_face(rng, look, female, age, mask_of(stem), skin, scene)
            img.save(img_dir / folder / f"{stem}.jpg", quality=92)
            faces.append((f"{i + 1:06d}", f"{stem}.jpg", *np.round(box, 4)))
        rows.append([f"{i + 1:06d}", gender, race, age, folder])
    _write_csv(root / "train" / "train.csv", ["id", "gender", "race", "age", "path"], rows)
    injected = inject_label_errors(root, wrong, seed=seed + 1) if wrong > 0 else None
    if injected is not None:
        injected.to_csv(root / "train" / "injected.csv", index=False)
    folders = dict(pd.read_csv(root / "train" / "train.csv", dtype=str)[["id", "path"]].to_numpy())  # as injected
    faces = [(f"train/images/{folders[i]}/{name}", *box) for i, name, *box in faces]
    eval_dir = root / "eval" / "images"
    eval_dir.mkdir(parents=True, exist_ok=True)
    truth, people_of = [], []
    for i in range(max(1, people * 2 // 3)):
        female, age, skin = bool(rng.integers(2)), contest_age(rng), SKINS[rng.integers(len(SKINS))]
        scene = draw_scene(rng, look)
        for stem in STEMS:
            m = mask_of(stem)
            image_id = hashlib.sha1(f"{style}-{seed}-{i}-{stem}".encode()).hexdigest()[:16] + ".jpg"
            img, box = draw_contest_face(rng, look, female, age, m, skin, scene)
            img.save(eval_dir / image_id, quality=92)
            truth.append((image_id, m * 6 + int(female) * 3 + age_bucket(age)))
            faces.append((f"eval/images/{image_id}", *np.round(box, 4)))
            people_of.append((image_id, f"{i + 1:06d}"))
    truth = [truth[j] for j in rng.permutation(len(truth))]
    _write_csv(root / "eval" / "info.csv", ["ImageID", "ans"], [(t, 0) for t, _ in truth])
    _write_csv(root / "eval" / "truth.csv", ["ImageID", "ans"], truth)
    _write_csv(root / "eval" / "people.csv", ["ImageID", "person"], people_of)  # for grouping purity only
    _write_csv(root / "faces.csv", ["path", "x0", "y0", "x1", "y1"], faces)  # true face boxes, for the crop's
    return root
