"""data.crop: the part of each photo the model sees. `center` keeps the middle of every photo; `face` a box
around the largest face OpenCV's frontal-face cascade finds (the cascade ships inside opencv-python-headless,
nothing is downloaded), grown by data.crop_margin on every side, and the centre crop where none is found
(the contest's masked faces often hide the mouth the cascade looks for). Detection runs once per image:
its raw boxes are kept beside the decode cache (one file for the data set, a row per image version), so a
new margin, image size or image list only re-crops."""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from .dataset import DECODE_THREADS, MAX_PIXELS, Box, load_rgb

log = logging.getLogger(__name__)

CENTER: Box = (0.125, 0.125, 0.875, 0.875)  # the middle 75% of each side
CASCADE = "haarcascade_frontalface_default.xml"
DETECT_SIDE = 512  # detection runs on the photo shrunk to this longest side: a face is never that small
COLUMNS = ["path", "stamp", "x0", "y0", "x1", "y1"]
_local = threading.local()  # one cascade per thread: detectMultiScale is not documented as thread-safe


def cascade():
    if not hasattr(_local, "cascade"):
        import cv2  # imported here: only data.crop=face needs OpenCV

        _local.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / CASCADE))
    return _local.cascade


def detect_face(path: str, max_pixels: int = MAX_PIXELS) -> Box | None:
    """The largest frontal face in the photo as fractions of it, or None."""
    im, _ = load_rgb(path, max_pixels)
    im.thumbnail((DETECT_SIDE, DETECT_SIDE))
    grey = np.asarray(im.convert("L"))
    side = min(grey.shape)
    found = cascade().detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(max(24, side // 8),) * 2)
    if len(found) == 0:
        return None
    x, y, w, h = max(found, key=lambda f: f[2] * f[3])
    W, H = im.size
    return (x / W, y / H, (x + w) / W, (y + h) / H)


def grow(box: Box, margin: float) -> Box:
    """`box` grown by `margin` of its width and height on every side, kept inside the photo."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy))


def faces_file(cache_dir: Path) -> Path:
    """Every face box found in this data set's images, one row per file version (path, size, mtime)."""
    return cache_dir / f"faces-{Path(CASCADE).stem}.csv"


def stamps(paths: list[str]) -> list[str]:
    """Each file's version: size and mtime, from one stat."""
    return [f"{st.st_size}:{st.st_mtime_ns}" for st in map(os.stat, paths)]


def detect_all(paths: list[str], cache_dir: Path | None, max_pixels: int = MAX_PIXELS) -> pd.DataFrame:
    """One row per path: the face box (x0, y0, x1, y1; NaN where none was found). Images detected before
    (the same path, size and mtime) are read from the cache file; the others are detected (threads: OpenCV
    releases the GIL) and added to it."""
    want = pd.DataFrame({"path": paths, "stamp": stamps(paths)})
    file = faces_file(cache_dir) if cache_dir is not None else None
    known = pd.read_csv(file) if file is not None and file.is_file() else pd.DataFrame(columns=COLUMNS)
    todo = want.merge(known, on=["path", "stamp"], how="left", indicator=True)
    new = todo.loc[todo["_merge"] == "left_only", "path"].tolist()
    if new:
        log.info("looking for faces in %d images (once; kept in %s)", len(new), file or "memory")
        with ThreadPoolExecutor(DECODE_THREADS) as ex:
            found = list(ex.map(lambda p: detect_face(p, max_pixels), new))
        rows = pd.DataFrame([(p, s, *(f or (np.nan,) * 4)) for p, s, f in zip(new, stamps(new), found)],
                            columns=COLUMNS)
        known = pd.concat([known[~known["path"].isin(new)], rows], ignore_index=True)
        if file is not None:
            files.write_csv(file, known)
    return want.merge(known, on=["path", "stamp"], how="left")[["path", "x0", "y0", "x1", "y1"]]


def boxes_for(crop: str, margin: float, paths: list[str], cache_dir: Path | None,
              max_pixels: int = MAX_PIXELS, say: bool = True) -> dict[str, Box] | None:
    """What each image is cropped to before it is resized (None: the whole photo)."""
    if crop == "none":
        return None
    if crop == "center":
        return dict.fromkeys(paths, CENTER)
    faces = detect_all(paths, cache_dir, max_pixels)
    missing = faces["x0"].isna().to_numpy()
    if say:
        log.info("data.crop=face: a face in %d of %d images; the other %d (%.0f%%) fall back to the centre crop",
                 (~missing).sum(), len(paths), missing.sum(), 100 * missing.mean())
    boxes = {}
    for p, x0, y0, x1, y1, gone in zip(faces["path"], faces["x0"], faces["y0"], faces["x1"], faces["y1"], missing):
        boxes[p] = CENTER if gone else tuple(round(v, 4) for v in grow((x0, y0, x1, y1), margin))
    return boxes
