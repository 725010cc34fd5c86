"""Members of one field (model.task=mask|gender|age) and 18-way members in one prediction: each field's
probabilities are the weighted mean of the members that predict it (an 18-way member's field marginals
count for every field), and the 18 classes their product. The contest's per-field winners did this by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import oof as oofs
from ..config import ConfigError
from ..data.competition import CLASSES, FIELDS, combine, field_of, field_of_classes, field_probs


def marginals(probs: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """What a member says about each field it predicts."""
    field = field_of_classes(classes)
    if field is not None:
        return {field: probs}
    return {f: field_probs(probs, f) for f in FIELDS}


def mixes_fields(classes: list[list[str]]) -> bool:
    return any(field_of_classes(c) for c in classes)


def mix(members: list[tuple[np.ndarray, list[str], float]], names: list[str]) -> tuple[np.ndarray, list[str]]:
    """(probabilities, classes) of members (probabilities, classes, weight) with at least one field member."""
    total: dict[str, np.ndarray] = {}
    weight: dict[str, float] = {}
    for (probs, classes, w), name in zip(members, names):
        if field_of_classes(classes) is None and classes != CLASSES:
            raise ConfigError(f"member '{name}' predicts {len(classes)} classes, neither the mask "
                              "layout's 18 nor one field's: it cannot be mixed with one-field members")
        for f, p in marginals(probs, classes).items():
            total[f] = total.get(f, 0) + w * p
            weight[f] = weight.get(f, 0.0) + w
    missing = [f for f in FIELDS if f not in total]
    if missing:
        raise ConfigError(f"the members {names} predict no {' and no '.join(missing)}: add a model.task="
                          f"{missing[0]} member or an 18-way one")
    return combine({f: total[f] / weight[f] for f in FIELDS}), list(CLASSES)


def oof_mix(runs: list[pd.DataFrame], classes: list[list[str]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(18-class labels, predicted classes) of members' out-of-fold frames on the same images (rows in one
    order), mixed as `mix` does; None if the fields are not all covered."""
    labels = {}
    for o, c in zip(runs, classes):
        field, y = field_of_classes(c), o["label"].to_numpy()
        labels.update({field: y} if field else {f: field_of(y, f) for f in FIELDS})
    try:
        probs = mix([(oofs.probs(o), c, 1.0) for o, c in zip(runs, classes)], [str(c[:1]) for c in classes])[0]
    except ConfigError:
        return None
    return labels["mask"] * 6 + labels["gender"] * 3 + labels["age"], probs.argmax(1)
