"""The mask competition's own rules, in one place: the seven image stems of a person, what mask
state each stem means, the age buckets, and the 18-class label formula. The real-data reader
(layouts), the split's strata and the built-in data generator (synth) all import them from here."""

from __future__ import annotations

STEMS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]  # one person's images
MASK_NAMES = ["wear", "incorrect", "not_worn"]
GENDERS = ["male", "female"]
OFFICIAL_EDGES = (30, 60)  # where the 30-59 and the >=60 buckets start


def age_ranges(edges=OFFICIAL_EDGES) -> list[tuple[int, int]]:
    """The ages of each bucket for these edges (120: the readers' upper bound)."""
    return [(0, edges[0] - 1), (edges[0], edges[1] - 1), (edges[1], 120)]


def age_names(edges=OFFICIAL_EDGES) -> list[str]:
    """<30, 30-59, >=60 for the official edges; <30, 30-57, >=58 for [30, 58]."""
    return [f"<{edges[0]}", f"{edges[0]}-{edges[1] - 1}", f">={edges[1]}"]


AGE_NAMES = age_names()
CLASSES = [f"{m}/{g}/{a}" for m in MASK_NAMES for g in GENDERS for a in AGE_NAMES]  # index = label
FIELDS = {"mask": MASK_NAMES, "gender": GENDERS, "age": AGE_NAMES}  # in the label's order


def field_classes(field: str) -> list[str]:
    """A one-field model's classes (model.task): mask:wear, mask:incorrect, ...; the prefix names the field."""
    return [f"{field}:{v}" for v in FIELDS[field]]


def field_of_classes(classes: list[str]) -> str | None:
    """The field a one-field model predicts, from its classes; None for the 18 classes (or other data)."""
    return next((f for f in FIELDS if classes == field_classes(f)), None)


def combine(marginals: dict):
    """(rows, 18) probabilities from each field's (rows, values) probabilities, taken as independent."""
    m, g, a = (marginals[f] for f in FIELDS)
    return (m[:, :, None, None] * g[:, None, :, None] * a[:, None, None, :]).reshape(len(m), 18)


def mask_of(stem: str) -> int:
    """0 worn (mask1..mask5), 1 incorrect, 2 not worn (normal)."""
    return 0 if stem.startswith("mask") else (1 if stem == "incorrect_mask" else 2)


def age_bucket(age: int, edges=OFFICIAL_EDGES) -> int:
    return 0 if age < edges[0] else (1 if age < edges[1] else 2)


def label(mask: int, gender: int, age: int, edges=OFFICIAL_EDGES) -> int:
    """The competition's class: mask * 6 + gender * 3 + age bucket (gender 0 male, 1 female). Other `edges`
    make training labels only (data.age_edges)."""
    return mask * 6 + gender * 3 + age_bucket(age, edges)


def field_of(labels, field: str):
    """The 18-class label's part (numpy arrays or ints): mask * 6 + gender * 3 + age bucket."""
    return {"mask": labels // 6, "gender": labels // 3 % 2, "age": labels % 3}[field]


def field_probs(probs, field: str):
    """(rows, values of `field`) probabilities from (rows, 18): the classes summed over the other two fields."""
    cube = probs.reshape(-1, 3, 2, 3)  # mask, gender, age
    return cube.sum(axis={"mask": (2, 3), "gender": (1, 3), "age": (1, 2)}[field])
