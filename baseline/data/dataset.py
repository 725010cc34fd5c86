"""Dataset and loaders. Each image is decoded once, at training resolution, into a uint8 cache
(RAM, or a memory-mapped file when it does not fit); samples are uint8 CHW tensors and the model
side normalises a whole batch at once on the device (see `normalize`)."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .. import files
from .layouts import DataError

log = logging.getLogger(__name__)


MAX_PIXELS = 64_000_000  # data.max_pixels' default


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greyscale (I;16*, I, F) scaled to 8 bits by the image's own value range;
    PIL's convert() would clip them, and a 16-bit scan comes out solid white."""
    a = np.asarray(im, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(scaled.round().astype(np.uint8), "L")


FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


MIN_SIDE = 8  # below this an image resized to the training size is a solid tile, not a picture
BACKGROUND = (255, 255, 255)  # what transparent pixels become: white, as a viewer shows them on a page


def header_size(path: str) -> tuple[int, int]:
    """(width, height) as displayed (EXIF rotation counted), from the header alone; DataError if unreadable."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"image '{path}' could not be read: {e}") from None
    return w, h


Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the displayed image (data/crops.py)


def decode(path: str, hw: tuple[int, int], max_pixels: int = MAX_PIXELS, interpolation: str = "bilinear",
           box: Box | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 at `hw` (resized with `interpolation`), of `box` only when given; EXIF rotation
    applied; grey/palette/16-bit made RGB, transparency composited on white (`to_rgb`)."""
    return _decode(path, hw, max_pixels, interpolation, box)[0]


def load_rgb(path: str, max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, bool]:
    """The image as displayed (EXIF rotation applied) in RGB, and whether it had transparent pixels; a
    DataError naming the file if it is unreadable, too large or too small."""
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise DataError(f"image '{path}' has {im.width}x{im.height} pixels, more than data.max_pixels="
                                f"{max_pixels}; shrink it, drop it, or raise data.max_pixels if it is genuine")
            if min(im.size) < MIN_SIDE:
                raise DataError(f"image '{path}' is {im.width}x{im.height} pixels; the kit needs at least {MIN_SIDE} "
                                "on each side (resized to the training size it would be a solid tile): drop it")
            im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I") or im.mode == "F":
                im = to_8bit(im)
            im, transparent = to_rgb(im)
            im.load()
            return im, transparent
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"image '{path}' could not be decoded: {e}") from None


def box_of(boxes: dict[str, Box] | None, path: str) -> Box | None:
    return None if boxes is None else boxes[path]


def _decode(path: str, hw: tuple[int, int], max_pixels: int, interpolation: str,
            box: Box | None = None) -> tuple[np.ndarray, bool]:
    """decode(), and whether the image had transparent pixels."""
    im, transparent = load_rgb(path, max_pixels)
    if box is not None:
        w, h = im.size
        im = im.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    im = im.resize((hw[1], hw[0]), FILTERS[interpolation], reducing_gap=2.0)
    return np.asarray(im, dtype=np.uint8), transparent


def to_rgb(im: Image.Image) -> tuple[Image.Image, bool]:
    """RGB, with any transparency (RGBA, LA, PA, a palette's or RGB's transparent colour) composited on
    BACKGROUND; PIL's convert('RGB') would show the colour hidden under it. Also: was any pixel transparent."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im, False
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not has_alpha:
        return im.convert("RGB"), False
    rgba = im.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema()[0] == 255:  # an alpha channel, all opaque
        return rgba.convert("RGB"), False
    flat = Image.new("RGB", rgba.size, BACKGROUND)
    flat.paste(rgba, mask=alpha)
    return flat, True


def cache_key(paths: list[str], hw: tuple[int, int], interpolation: str = "bilinear",
              boxes: dict[str, Box] | None = None) -> str:
    """A fingerprint of the files (path, size, mtime), the decoded size and filter and any crop boxes."""
    h = hashlib.sha1(repr(hw if interpolation == "bilinear" else (hw, interpolation)).encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        if boxes is not None:
            h.update(repr(boxes[p]).encode())
    return h.hexdigest()[:16]


def decode_all(paths: list[str], hw: tuple[int, int], out: np.ndarray, workers: int = 4,
               max_pixels: int = MAX_PIXELS, interpolation: str = "bilinear",
               boxes: dict[str, Box] | None = None) -> np.ndarray:
    # PIL releases the GIL while decoding, so threads scale on the cores we have.
    def one(i: int) -> bool:
        out[i], transparent = _decode(paths[i], hw, max_pixels, interpolation, box_of(boxes, paths[i]))
        return transparent

    with ThreadPoolExecutor(max(1, workers)) as ex:
        transparent = [p for p, t in zip(paths, ex.map(one, range(len(paths)))) if t]
    if transparent:
        log.warning("%d image(s) have transparent pixels (e.g. %s): composited on white", len(transparent),
                    transparent[0])
    return out


def build_cache(paths: list[str], hw: tuple[int, int], mode: str, cache_dir: Path, ram_gb: float,
                max_pixels: int = MAX_PIXELS, interpolation: str = "bilinear",
                boxes: dict[str, Box] | None = None) -> np.ndarray | None:
    """Decoded images as one uint8 array (N, H, W, 3), or None for mode 'off'. A disk cache is named
    by a fingerprint of the file list, sizes, mtimes and image size; one that does not read back
    whole (truncated, foreign) is rebuilt, never used."""
    mode = cache_mode(mode, len(paths), hw, ram_gb)
    if mode == "off":
        return None
    if mode == "ram":
        log.info("decoding %d images at %dx%d into memory (once per run)", len(paths), hw[1], hw[0])
        return decode_all(paths, hw, np.empty((len(paths), *hw, 3), np.uint8), DECODE_THREADS, max_pixels,
                          interpolation, boxes)
    file = cache_dir / f"{cache_key(paths, hw, interpolation, boxes)}.npy"
    return np.load(write_cache_file(paths, hw, file, max_pixels, interpolation, boxes), mmap_mode="r")


DECODE_THREADS = min(8, os.cpu_count() or 1)


def write_cache_file(paths: list[str], hw: tuple[int, int], file: Path, max_pixels: int = MAX_PIXELS,
                     interpolation: str = "bilinear", boxes: dict[str, Box] | None = None) -> Path:
    """`file`: the decoded images as a .npy file, written unless a whole one of this shape is there."""
    shape = (len(paths), *hw, 3)
    if file.is_file():
        if _open_cache(file, shape) is not None:
            return file
        log.warning("decode cache '%s' is damaged or not this data's: rebuilding it", file)
    file.parent.mkdir(parents=True, exist_ok=True)
    log.info("decoding %d images at %dx%d into %s (once)", len(paths), hw[1], hw[0], file)
    with files.replacing(file) as tmp:  # a broken image, a full disk, Ctrl-C: no half-written cache left
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode_all(paths, hw, arr, DECODE_THREADS, max_pixels, interpolation, boxes)
        arr.flush()
        del arr
    return file


SHARED_DIR = Path("/dev/shm")  # shared memory on Linux: what a machine's processes map without a disk


def shared_cache_file(paths: list[str], hw: tuple[int, int], token: str, interpolation: str = "bilinear",
                      shared: Path = SHARED_DIR, boxes: dict[str, Box] | None = None) -> Path | None:
    """Where one machine's processes can share a RAM cache (a file in shared memory), or None where
    shared memory is missing or too small for it (Docker's default is 64 MB: --shm-size or --ipc=host)."""
    need = len(paths) * hw[0] * hw[1] * 3
    try:
        free = shutil.disk_usage(shared).free
    except OSError:
        return None
    if free < need * 1.1 + 64 * 2**20:
        return None
    return shared / f"baseline-{cache_key(paths, hw, interpolation, boxes)}-{token}.npy"


def cache_mode(mode: str, n: int, hw: tuple[int, int], ram_gb: float) -> str:
    """data.cache as used: `auto` is RAM below data.cache_ram_gb, a disk file above."""
    if mode != "auto":
        return mode
    return "ram" if n * hw[0] * hw[1] * 3 < ram_gb * 2**30 else "disk"


def _open_cache(file: Path, shape: tuple) -> np.ndarray | None:
    try:
        arr = np.load(file, mmap_mode="r")
    except (OSError, ValueError):
        return None
    return arr if arr.shape == shape and arr.dtype == np.uint8 else None


def reseed(compose, seed: int) -> None:
    """Seed an albumentations Compose and its transforms with one shared stream. Same effect as
    `Compose.set_random_seed` (a deterministic draw per item) at a tenth of its cost per item."""
    rng, py = np.random.default_rng(seed), random.Random(seed)
    for t in (compose, *compose.transforms):
        t.random_generator, t.py_random = rng, py


class ImageDataset(Dataset):
    """(uint8 CHW tensor, label) pairs; from the cache when there is one. An item is asked for by its
    index, or by (index, augmentation seed) as the training samplers yield it."""

    def __init__(self, paths: list[str], labels: list[int] | None, hw: tuple[int, int], transform=None,
                 cache: np.ndarray | None = None, max_pixels: int = MAX_PIXELS, interpolation: str = "bilinear",
                 rows: np.ndarray | None = None, boxes: dict[str, Box] | None = None):
        self.paths, self.labels, self.hw, self.max_pixels = list(paths), labels, hw, max_pixels
        self.interpolation, self.boxes = interpolation, boxes
        # `rows`: where item i sits in `cache` (a subset of a whole-table cache). Indexing through it keeps
        # one cache for the machine; cache[rows] would copy it into every process.
        self.transform, self.cache = transform, cache
        self.rows = np.arange(len(self.paths)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int | None]):
        i, seed = key if isinstance(key, tuple) else (key, None)
        img = self.cache[self.rows[i]] if self.cache is not None else decode(
            self.paths[i], self.hw, self.max_pixels, self.interpolation, box_of(self.boxes, self.paths[i]))
        if self.transform is not None:
            if seed is not None:
                # Augmentation is a function of (seed, epoch, position in the draw, item) alone: the same
                # whatever the worker count, and a run resumed mid-epoch sees what the uninterrupted run saw.
                reseed(self.transform, (seed * 1_000_003 + i) % 2**32)
            img = self.transform(image=np.ascontiguousarray(img))["image"]
        # No copy of our own: collate copies into the batch anyway. Only a read-only memmap row is copied
        # (torch will not wrap memory it may not write).
        x = torch.from_numpy(img if img.flags.writeable else np.array(img)).permute(2, 0, 1)
        return x, (self.labels[i] if self.labels is not None else -1)


class SeededSampler(Sampler):
    """A training sampler's indices as (index, augmentation seed) pairs. Persistent workers keep their own
    copy of the dataset for the whole run, so the epoch's seed (`set_epoch`) travels with each index. The
    seed is the epoch's and the item's position in the epoch's whole draw (every rank's share interleaved:
    rank r's k-th item is position r + k * world), so an image drawn three times in an epoch (balanced
    sampling draws with replacement) is augmented three ways, whatever the world size or a mid-epoch resume."""

    skip = 0  # items of this epoch already trained on (a resumed, preempted epoch starts part-way)
    aug_seed: int | None = None

    def indices(self) -> list[int]:
        raise NotImplementedError

    def __iter__(self):
        if self.aug_seed is None:
            return iter([(i, None) for i in self.indices()[self.skip:]])
        base, rank, world = self.aug_seed * 1_000_003, self.rank, self.num_replicas
        return iter([(i, base + rank + k * world) for k, i in enumerate(self.indices())][self.skip:])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class EpochSampler(SeededSampler, DistributedSampler):
    """DistributedSampler (its shuffle a function of seed and epoch), as SeededSampler pairs."""

    def indices(self) -> list[int]:
        return list(DistributedSampler.__iter__(self))


class BalancedSampler(SeededSampler):
    """Class-balanced sampling: each epoch one draw with replacement, an image's weight 1 / (its class's
    count) ** power, seeded by (seed, epoch) alone, so every rank makes the same draw and takes its own
    share (every world-th item: disjoint, and together exactly the one-process draw)."""

    def __init__(self, labels: list[int], power: float, num_replicas: int, rank: int, seed: int):
        labels = np.asarray(labels)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(counts[labels].astype(np.float64) ** -power)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = len(labels) // num_replicas  # as DistributedSampler with drop_last

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self) -> list[int]:
        """The whole epoch's draw, every rank's share interleaved."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.multinomial(self.weights, self.num_samples * self.num_replicas, True, generator=g).tolist()

    def indices(self) -> list[int]:
        return self.draw()[self.rank::self.num_replicas]


class ShardSampler(Sampler):
    """Rank r takes items r, r+world, ...: every item exactly once across ranks, no padding."""

    def __init__(self, n: int, rank: int, world: int):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def train_loader(ds: ImageDataset, batch_size: int, workers: int, seed: int, rank: int, world: int,
                 balanced_power: float | None = None) -> DataLoader:
    """Shuffled (or class-balanced, `balanced_power`) batches; a function of (seed, epoch) alone."""
    # DistributedSampler even for one process: its shuffle depends only on (seed, epoch), which
    # is what makes a resumed run see the same batches as an uninterrupted one.
    sampler = (EpochSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
               if balanced_power is None else BalancedSampler(ds.labels, balanced_power, world, rank, seed))
    # Its own generator (seeded once), so starting workers does not draw from the global torch RNG.
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      generator=torch.Generator().manual_seed(seed), **worker_options(workers))


def worker_options(workers: int) -> dict:
    """Workers started once for the run (forking 8 per epoch costs seconds a GPU waits for), each with
    its own NumPy and Python seed; pinned memory when there is a GPU to copy to."""
    if not workers:
        return {"pin_memory": torch.cuda.is_available()}
    return {"persistent_workers": True, "worker_init_fn": seed_worker, "pin_memory": torch.cuda.is_available(),
            "prefetch_factor": 4}


def seed_worker(worker_id: int) -> None:
    """NumPy and `random` in a worker from torch's seed for it (the loader's generator + worker id): they
    differ by worker and repeat with the run's seed. torch does its own; NumPy would inherit the parent's."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def set_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make epoch `epoch` of `loader` a pure function of (seed, epoch): shuffle and augmentation."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.aug_seed = seed * 1000 + epoch


def eval_loader(ds: ImageDataset, batch_size: int, workers: int, rank: int = 0, world: int = 1) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), rank, world), num_workers=workers,
                      **worker_options(workers))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 NCHW batch -> normalised float batch, on x's device."""
    x = x.float().div_(255).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
