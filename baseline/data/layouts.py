"""Layout readers: competition (`mask`), generic `csv`, and `folder` -> one table.

Every reader returns a `Table`: a DataFrame with at least `path` (absolute), `label` (int) and
`group` (str), plus the class names. Test readers return `path`, `id` and the template frame the
submission must match.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..config import Config
from ..errors import DataError
from .competition import CLASSES as MASK_CLASSES
from .competition import GENDERS, STEMS, mask_of
from .competition import label as mask_label

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png"}


@dataclass
class Table:
    df: pd.DataFrame  # path, label, group [+ layout extras]
    classes: list[str]


@dataclass
class TestTable:
    df: pd.DataFrame  # path, id
    template: pd.DataFrame  # the rows and columns the submission must have
    id_col: str
    label_col: str


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS


def _read_csv(path: Path, required: list[str], what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several types for a broken file
        raise DataError(f"{what} '{path}' could not be read as CSV: {e}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{what} '{path}' lacks column(s) {missing}; it has {list(df.columns)}")
    return df


def _root(cfg: Config) -> Path:
    root = Path(cfg.data.root)
    if not root.is_dir():
        hint = " (make the built-in dataset with `baseline data synth`)" if cfg.data.format == "mask" else ""
        raise DataError(f"data.root '{root}' does not exist or is not a folder{hint}")
    return root


# ---------------------------------------------------------------- competition layout
def _parse_folder(name: str, csv_path: Path, row: int) -> tuple[str, int]:
    """(gender, age) that the folder name `<id>_<gender>_<race>_<age>` states."""
    parts = name.split("_")
    if len(parts) != 4 or not parts[3].isdigit() or parts[1].lower() not in GENDERS:
        raise DataError(
            f"{csv_path} row {row}: folder name '{name}' does not parse as <id>_<gender>_<race>_<age>"
        )
    return parts[1].lower(), int(parts[3])


MAX_AGE = 120


def _person_row(p, csv_path: Path, row: int) -> tuple[str, int]:
    """The row's (gender, age), checked for range and against its folder name."""
    gender = str(p.gender).strip().lower()
    if gender not in GENDERS:
        raise DataError(f"{csv_path} row {row}: gender '{p.gender}' is not male or female")
    try:
        age = int(str(p.age).strip())
    except ValueError:
        raise DataError(f"{csv_path} row {row}: age '{p.age}' is not an integer") from None
    if not 0 <= age <= MAX_AGE:
        raise DataError(f"{csv_path} row {row}: age {age} is outside 0..{MAX_AGE}")
    folder_gender, folder_age = _parse_folder(p.path, csv_path, row)
    if (folder_gender, folder_age) != (gender, age):
        raise DataError(f"{csv_path} row {row}: the row says {gender}, {age} but its folder '{p.path}' says "
                        f"{folder_gender}, {folder_age}; fix one of them (or use data.corrections)")
    return gender, age


def _no_repeats(df: pd.DataFrame, cols: list[str], csv_path: Path) -> None:
    for col in cols:
        dup = df[col].duplicated(keep=False)
        if dup.any():
            rows = [int(i) + 2 for i in df.index[dup][:2]]
            raise DataError(f"{csv_path} rows {rows[0]} and {rows[1]}: {col} '{df[col][dup].iloc[0]}' is listed "
                            f"twice; each {col} must appear once")


def _apply_corrections(people: pd.DataFrame, path: str) -> tuple[pd.DataFrame, list[dict]]:
    fixes = _read_csv(Path(path), ["id", "field", "value"], "data.corrections file")
    people = people.copy()
    applied = []
    for i, r in fixes.iterrows():
        if r.field not in ("gender", "age"):
            raise DataError(f"data.corrections '{path}' row {i + 2}: field '{r.field}' must be gender or age")
        hit = people["id"] == r.id
        if not hit.any():
            raise DataError(f"data.corrections '{path}' row {i + 2}: no person with id '{r.id}'")
        applied.append({"id": r.id, "field": r.field, "old": people.loc[hit, r.field].iloc[0], "new": r.value})
        people.loc[hit, r.field] = r.value
    return people, applied


def read_mask(cfg: Config) -> Table:
    root = _root(cfg)
    csv_path = root / "train" / "train.csv"
    people = _read_csv(csv_path, ["id", "gender", "age", "path"], "train.csv")
    _no_repeats(people, ["id", "path"], csv_path)
    for i, p in enumerate(people.itertuples(index=False)):  # as written, before any correction
        _person_row(p, csv_path, i + 2)
    corrections: list[dict] = []
    if cfg.data.corrections:
        people, corrections = _apply_corrections(people, cfg.data.corrections)
    rows, spellings = [], Spellings()
    for i, p in enumerate(people.itertuples(index=False)):
        row = i + 2  # header is line 1
        gender, age = str(p.gender).strip().lower(), int(str(p.age).strip())
        if gender not in GENDERS or not 0 <= age <= MAX_AGE:
            raise DataError(f"data.corrections '{cfg.data.corrections}': id '{p.id}' is corrected to "
                            f"{p.gender}, {p.age}; expected male/female and an age in 0..{MAX_AGE}")
        folder = spellings.on_disk(root / "train" / "images" / p.path)
        if not folder.is_dir():
            raise DataError(f"{csv_path} row {row}: image folder '{folder}' does not exist")
        found: dict[str, Path] = {}
        extra = []
        for f in sorted(folder.iterdir()):
            if not _is_image(f):
                continue
            stem = f.stem.lower()
            if stem in STEMS and stem not in found:
                found[stem] = f
            else:
                extra.append(f.name)
        if not found:
            raise DataError(f"image folder '{folder}' has none of the seven images {STEMS}")
        missing = [s for s in STEMS if s not in found]
        if missing or extra:
            log.warning("folder '%s': missing %s, ignored extra %s", folder, missing, extra)
        g = GENDERS.index(gender)
        for stem, f in found.items():
            m = mask_of(stem)
            rows.append(
                {"path": str(f), "label": mask_label(m, g, age), "group": str(p.id),
                 "mask": m, "gender": g, "age": age, "stem": stem}
            )
    df = pd.DataFrame(rows)
    df.attrs["corrections"] = corrections
    return Table(df, MASK_CLASSES)


def read_mask_test(cfg: Config) -> TestTable:
    root = _root(cfg)
    info_path = root / "eval" / "info.csv"
    info = _read_csv(info_path, ["ImageID"], "eval/info.csv")
    _no_repeats(info, ["ImageID"], info_path)
    paths = [root / "eval" / "images" / i for i in info["ImageID"]]
    paths = _require_files(paths, info_path)
    df = pd.DataFrame({"path": [str(p) for p in paths], "id": info["ImageID"]})
    template = info if "ans" in info.columns else info.assign(ans=0)
    return TestTable(df, template, "ImageID", "ans")


def check_test_labels(test: TestTable, classes: list[str], listed_in: str) -> None:
    """A labelled test set may only name classes the model knows ("02" and "2" are one class)."""
    if "given_label" not in test.df.columns:
        return
    given = test.df["given_label"]
    given = given[given != ""].map(lambda v: str(int(v)) if v.lstrip("-").isdigit() else v)
    unknown = given[~given.isin(classes)]
    if len(unknown):
        raise DataError(f"{listed_in} row {unknown.index[0] + 2}: label '{unknown.iloc[0]}' is not one of the "
                        f"model's {len(classes)} classes {classes[:10]}")


def _require_files(paths: list[Path], listed_in: Path) -> list[Path]:
    """`paths` as spelled on disk (see Spellings); DataError naming the first that does not exist."""
    paths = Spellings().fix(paths)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{listed_in} lists {len(missing)} image(s) that do not exist, e.g. '{missing[0]}'")
    return paths


class Spellings:
    """Paths as the disk spells them. A name in another Unicode form than the CSV's (macOS zips write
    NFD, '한' as three code points; a CSV is usually NFC) names the same file to a person but not to Linux.
    Only names that are missing are looked up, in one listing per folder."""

    def __init__(self):
        self._listings: dict[Path, dict[str, str]] = {}

    def fix(self, paths: list[Path]) -> list[Path]:
        return [p if p.exists() else self.on_disk(p) for p in paths]

    def on_disk(self, path: Path) -> Path:
        if path.exists() or path.parent == path:
            return path
        parent = self.on_disk(path.parent)
        if parent not in self._listings:
            names = os.listdir(parent) if parent.is_dir() else []
            self._listings[parent] = {unicodedata.normalize("NFC", n): n for n in names}
        return parent / self._listings[parent].get(unicodedata.normalize("NFC", path.name), path.name)


# ---------------------------------------------------------------- generic CSV layout
MISSING_LABELS = {"nan", "none", "null", "na", "n/a"}


def _under_root(root: Path, names: pd.Series, csv_path: Path, allowed: bool) -> list[Path]:
    """Image paths of a CSV, which must stay inside data.root (a copied folder then still works)."""
    paths = [root / p for p in names]
    if not allowed:
        top = root.resolve()
        for i, p in enumerate(paths):
            if not p.resolve().is_relative_to(top):
                raise DataError(f"{csv_path} row {i + 2}: image '{names.iloc[i]}' is outside data.root '{root}'; "
                                "move it under the root or set data.allow_outside_root=true")
    return paths
def _class_list(values: pd.Series) -> list[str]:
    uniq = values.unique().tolist()
    if all(v.lstrip("-").isdigit() for v in uniq):
        return [str(v) for v in sorted(int(v) for v in uniq)]
    return sorted(uniq)


def read_csv_layout(cfg: Config) -> Table:
    root = _root(cfg)
    d = cfg.data
    if not d.train_csv:
        raise DataError("data.format=csv needs data.train_csv (a CSV of images and labels, relative to data.root)")
    csv_path = root / d.train_csv
    cols = [d.image_col, d.label_col] + ([d.group_col] if d.group_col else [])
    df = _read_csv(csv_path, cols, "data.train_csv")
    empty = df.index[(df[d.label_col].str.strip() == "") | (df[d.image_col].str.strip() == "")]
    if len(empty):
        raise DataError(f"{csv_path} row {empty[0] + 2}: empty '{d.image_col}' or '{d.label_col}'")
    missing = df.index[df[d.label_col].str.strip().str.lower().isin(MISSING_LABELS)]
    if len(missing):
        raise DataError(f"{csv_path} row {missing[0] + 2}: label '{df[d.label_col][missing[0]]}' reads as a missing "
                        "value, not a class; drop the row or give it its class")
    _no_repeats(df, [d.image_col], csv_path)
    labels = df[d.label_col].str.strip()
    if labels.str.lstrip("-").str.isdigit().all():
        labels = labels.astype(int).astype(str)  # "01" and "1" are one class
    classes = _class_list(labels)
    paths = _under_root(root, df[d.image_col], csv_path, cfg.data.allow_outside_root)
    paths = _require_files(paths, csv_path)
    table = pd.DataFrame({
        "path": [str(p) for p in paths],
        "label": labels.map({c: i for i, c in enumerate(classes)}).astype(int),
        "group": df[d.group_col].astype(str) if d.group_col else df[d.image_col],
    })
    return Table(table, classes)


def read_csv_test(cfg: Config) -> TestTable:
    root = _root(cfg)
    d = cfg.data
    if not d.test_csv:
        raise DataError("data.format=csv needs data.test_csv to predict (a CSV with the image column)")
    csv_path = root / d.test_csv
    df = _read_csv(csv_path, [d.image_col], "data.test_csv")
    _no_repeats(df, [d.image_col], csv_path)
    paths = _under_root(root, df[d.image_col], csv_path, cfg.data.allow_outside_root)
    paths = _require_files(paths, csv_path)
    out = pd.DataFrame({"path": [str(p) for p in paths], "id": df[d.image_col]})
    if d.label_col in df.columns:  # a labelled test set: its labels must be classes the model knows
        out["given_label"] = df[d.label_col].str.strip()
    template = pd.DataFrame({d.image_col: df[d.image_col], d.label_col: ""})
    return TestTable(out, template, d.image_col, d.label_col)


# ---------------------------------------------------------------- ImageFolder layout
def read_folder(cfg: Config) -> Table:
    root = _root(cfg)
    # test/ holds the images to predict, splits/ the kit's own split files.
    class_dirs = sorted(p for p in root.iterdir()
                        if p.is_dir() and not p.name.startswith(".") and p.name not in ("test", "splits"))
    if not class_dirs:
        raise DataError(f"data.root '{root}' has no class folders (expected <root>/<class>/*.jpg)")
    rows = []
    for label, c in enumerate(class_dirs):
        imgs = sorted(f for f in c.rglob("*") if _is_image(f))
        if not imgs:
            raise DataError(f"class folder '{c}' has no images ({', '.join(sorted(IMAGE_EXTS))})")
        rows += [{"path": str(f), "label": label, "group": str(f.relative_to(root))} for f in imgs]
    return Table(pd.DataFrame(rows), [c.name for c in class_dirs])


def read_folder_test(cfg: Config) -> TestTable:
    test = _root(cfg) / "test"
    if not test.is_dir():
        raise DataError(f"data.format=folder predicts '{test}', which does not exist")
    imgs = sorted(f for f in test.rglob("*") if _is_image(f))
    if not imgs:
        raise DataError(f"test folder '{test}' has no images")
    ids = [str(f.relative_to(test)) for f in imgs]
    df = pd.DataFrame({"path": [str(f) for f in imgs], "id": ids})
    return TestTable(df, pd.DataFrame({"image": ids, "label": ""}), "image", "label")


READERS = {"mask": (read_mask, read_mask_test), "csv": (read_csv_layout, read_csv_test),
           "folder": (read_folder, read_folder_test)}


def read_table(cfg: Config) -> Table:
    table = READERS[cfg.data.format][0](cfg)
    if table.df.empty:
        raise DataError(f"no training images found under data.root '{cfg.data.root}'")
    return table


def class_names(cfg: Config) -> list[str]:
    """The classes the data defines: fixed for the competition layout, else read from the training
    table (the csv's labels, the folder names)."""
    return MASK_CLASSES if cfg.data.format == "mask" else read_table(cfg).classes


def read_test_table(cfg: Config) -> TestTable:
    return READERS[cfg.data.format][1](cfg)
