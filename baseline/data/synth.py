"""The built-in dataset, written in the competition layout (docs/data.md, "Layouts").

Every label part is drawn, not noise, so macro-F1 measures learning:
- mask state: a mask over nose and mouth (worn), under the nose (incorrect), or none (mouth shows);
- gender: short hair (male) or long hair down to the shoulders (female);
- age bucket: hair colour, dark (<30), greyish brown (30..59) or white (>=60).
Pose, size, skin, background and mask colour vary per image. Seeded, so every teammate gets the
same bytes.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from .competition import STEMS, age_bucket, mask_of

W, H = 96, 128  # portrait, like the competition's 384x512
RACES = ["Asian", "Black", "White"]
SKINS = [(234, 192, 160), (198, 150, 110), (140, 95, 65), (250, 215, 185)]
MIN_AGE_ERROR = 3  # years between a wrong age written and the true one
HAIR = [(35, 25, 20), (125, 105, 85), (225, 225, 225)]  # by age bucket
MASKS = [(245, 245, 245), (70, 120, 200), (30, 30, 30), (230, 150, 180), (120, 190, 140)]
AGE_RANGES = [(18, 29), (30, 59), (60, 75)]
AGE_P = [0.45, 0.35, 0.20]


def _jitter(rng: np.random.Generator, colour: tuple, amount: int) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def draw_face(rng: np.random.Generator, female: bool, age_bucket: int, mask: int, skin: tuple) -> Image.Image:
    """One picture; `mask` is 0 worn, 1 incorrect, 2 not worn."""
    bg = tuple(int(v) for v in rng.integers(60, 200, size=3))
    img = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(img)
    s = rng.uniform(0.85, 1.1)
    cx, cy = W / 2 + rng.uniform(-7, 7), H / 2 + rng.uniform(-7, 7)
    fw, fh = 30 * s, 40 * s  # face half-width / half-height
    hair = _jitter(rng, HAIR[age_bucket], 18)
    if female:  # long hair behind the face, down past the chin
        d.rectangle([cx - fw - 8 * s, cy - fh * 0.6, cx + fw + 8 * s, cy + fh + 18 * s], fill=hair)
    d.ellipse([cx - fw - 6 * s, cy - fh - 8 * s, cx + fw + 6 * s, cy + fh * 0.2], fill=hair)
    d.ellipse([cx - fw, cy - fh * 0.75, cx + fw, cy + fh], fill=_jitter(rng, skin, 10))
    eye_y = cy - fh * 0.2
    for ex in (cx - fw * 0.4, cx + fw * 0.4):
        d.ellipse([ex - 4 * s, eye_y - 3 * s, ex + 4 * s, eye_y + 3 * s], fill=(20, 20, 20))
    nose_y = cy + fh * 0.15
    d.polygon([(cx, nose_y - 8 * s), (cx - 5 * s, nose_y + 3 * s), (cx + 5 * s, nose_y + 3 * s)], fill=(110, 60, 50))
    mouth_y = cy + fh * 0.5
    d.rectangle([cx - 10 * s, mouth_y - 2 * s, cx + 10 * s, mouth_y + 3 * s], fill=(190, 40, 50))
    colour = _jitter(rng, MASKS[rng.integers(len(MASKS))], 12)
    if mask == 0:
        d.rounded_rectangle([cx - fw * 0.95, nose_y - 10 * s, cx + fw * 0.95, cy + fh * 0.9], 6, fill=colour)
    elif mask == 1:
        d.rounded_rectangle([cx - fw * 0.9, nose_y + 6 * s, cx + fw * 0.9, cy + fh * 1.05], 6, fill=colour)
    angle = rng.uniform(-10, 10)
    return img.rotate(angle, resample=Image.BILINEAR, fillcolor=bg)


def _person(rng: np.random.Generator, age_p=AGE_P) -> tuple[bool, int, int, tuple]:
    bucket = int(rng.choice(3, p=age_p))
    lo, hi = AGE_RANGES[bucket]
    return bool(rng.integers(2)), int(rng.integers(lo, hi + 1)), bucket, SKINS[rng.integers(len(SKINS))]


def _sized(img: Image.Image, scale: int) -> Image.Image:
    return img if scale == 1 else img.resize((W * scale, H * scale), Image.BICUBIC)


def write_synth(root: str | Path, people: int = 240, seed: int = 0, scale: int = 1, age_p=AGE_P,
                draw=draw_face) -> Path:
    """Write the dataset under `root` (train/ and eval/); returns root. Existing files are replaced.
    `scale` 4 gives the competition's 384x512 pictures (for benchmarks of decoding); `age_p` the share
    of each age bucket; `draw` the picture-maker (another style: see data/suite.py)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_train(root, rng, people, scale, age_p, draw)
    # Eval people : train people = 2 : 3, as in the competition (1800 : 2700). A quarter (420 test images
    # by default) could not rank two submissions 1% apart: the order of two 5-fold bags flipped.
    _write_eval(root, rng, max(1, people * 2 // 3), seed, scale, age_p, draw)
    return root


def _write_train(root: Path, rng: np.random.Generator, people: int, scale: int, age_p, draw) -> None:
    img_dir = root / "train" / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(people):
        female, age, bucket, skin = _person(rng, age_p)
        pid = f"{i + 1:06d}"
        gender = "female" if female else "male"
        race = RACES[rng.integers(len(RACES))]
        folder = f"{pid}_{gender}_{race}_{age}"
        rows.append([pid, gender, race, age, folder])
        (img_dir / folder).mkdir(exist_ok=True)
        # Mixed extensions, as in the real data; .png for every 5th person.
        ext = ".png" if i % 5 == 4 else (".jpeg" if i % 7 == 3 else ".jpg")
        for stem in STEMS:
            mask = mask_of(stem)
            _sized(draw(rng, female, bucket, mask, skin), scale).save(img_dir / folder / f"{stem}{ext}", quality=92)
    _write_csv(root / "train" / "train.csv", ["id", "gender", "race", "age", "path"], rows)


def _write_eval(root: Path, rng: np.random.Generator, people: int, seed: int, scale: int, age_p, draw) -> None:
    """eval/images, eval/info.csv (the template: every answer 0) and eval/truth.csv, in a shuffled order."""
    eval_dir = root / "eval" / "images"
    eval_dir.mkdir(parents=True, exist_ok=True)
    truth = []
    for i in range(people):
        female, _age, bucket, skin = _person(rng, age_p)
        for stem in STEMS:
            mask = mask_of(stem)
            image_id = hashlib.sha1(f"{seed}-{i}-{stem}".encode()).hexdigest()[:16] + ".jpg"
            _sized(draw(rng, female, bucket, mask, skin), scale).save(eval_dir / image_id, quality=92)
            truth.append((image_id, mask * 6 + int(female) * 3 + bucket))  # competition.label, by bucket
    truth = [truth[j] for j in rng.permutation(len(truth))]
    _write_csv(root / "eval" / "info.csv", ["ImageID", "ans"], [(image_id, 0) for image_id, _ in truth])
    _write_csv(root / "eval" / "truth.csv", ["ImageID", "ans"], truth)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def inject_label_errors(root: str | Path, share: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Write wrong labels into a competition-layout data set, as the real one had: for `share` of the
    people, train.csv and the folder name state the other gender, or an age in a neighbouring bucket
    at least MIN_AGE_ERROR years from the true one (the photos keep showing the truth). Returns what was
    changed: id, field, true, written."""
    root = Path(root)
    listed = root / "train" / "train.csv"
    df = pd.read_csv(listed, dtype=str)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(df), size=max(1, round(share * len(df))), replace=False)
    oldest = max(int(a) for a in df["age"])
    changed = []
    for i in picked:
        row = df.loc[i]
        if rng.random() < 0.5:
            field, true = "gender", row.gender
            df.loc[i, "gender"] = written = "male" if true == "female" else "female"
        else:
            field, true = "age", row.age
            df.loc[i, "age"] = written = str(_wrong_age(rng, int(true), oldest))
        folder = f"{row.id}_{df.loc[i, 'gender']}_{row.race}_{df.loc[i, 'age']}"
        (root / "train" / "images" / row.path).rename(root / "train" / "images" / folder)
        df.loc[i, "path"] = folder
        changed.append({"id": row.id, "field": field, "true": true, "written": written})
    df.to_csv(listed, index=False)
    return pd.DataFrame(changed)


def _wrong_age(rng: np.random.Generator, true: int, oldest: int) -> int:
    """An age in a neighbouring bucket at least MIN_AGE_ERROR years from the true one. Closer is no
    error a photo can show (the contest sets draw 58 and 60 alike) and no error a team would fix."""
    bucket = age_bucket(true)
    to = bucket + (1 if bucket < 2 and (bucket == 0 or rng.random() < 0.5) else -1)
    ages = _ages_far_from(true, to, oldest)
    if not ages:  # a 58 whose only older bucket is 60: the error goes the other way
        to = 2 * bucket - to
        ages = _ages_far_from(true, to, oldest)
    return ages[int(rng.integers(len(ages)))]


def _ages_far_from(true: int, bucket: int, oldest: int) -> list[int]:
    lo, hi = AGE_RANGES[bucket]
    # ages as the data has them: a set whose oldest are all 60 (the contest) gets 60, not 61-75
    hi = min(hi, oldest) if bucket == 2 else hi
    return [a for a in range(lo, hi + 1) if abs(a - true) >= MIN_AGE_ERROR]
