"""The golden run: a fixed-seed tiny `cv` (3 folds, 2 epochs) and its `submit`, recorded before the
package was restructured (tests/golden/). A change that means to keep behaviour must give the same
per-epoch metrics, the same out-of-fold probabilities and the same submission. Recorded on one CPU model;
on that model the numbers agree to 1e-6 and the submission byte for byte, on another (other float
kernels) to 2e-3 with at least 95% of the predictions the same. Re-record, only when a change of
behaviour is meant: pytest tests/test_golden.py --record-golden."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from baseline.cli import main
from baseline.data.synth import write_synth
from tests.conftest import tiny_overrides

GOLDEN = Path(__file__).parent / "golden"
TIMINGS = ["images_per_s", "epoch_s", "mem_rss_mb"]  # the machine's, not the code's


def cpu_model() -> str:
    """The CPU's name and the vector units that pick torch's float kernels."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    return " ".join([name, *sorted(flags & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile"})])


def golden_run(tmp_path: Path, monkeypatch) -> dict[str, pd.DataFrame | bytes]:
    monkeypatch.chdir(tmp_path)
    root = write_synth(tmp_path / "data", people=24, seed=3)
    runs = tmp_path / "runs"
    over = tiny_overrides(root, runs, **{"run.name": "golden", "train.epochs": 2, "train.threads": 1, "seed": 7,
                                        "submit.person_vote": "off"})  # recorded before voting existed
    assert main(["cv", *over]) == 0
    out = tmp_path / "sub.csv"
    assert main(["submit", *over, f"submit.checkpoints=[{runs / 'golden'}]", f"submit.out={out}"]) == 0
    metrics = pd.concat([pd.read_csv(runs / "golden" / f"fold{k}" / "metrics.csv").assign(fold=k) for k in range(3)])
    oof = pd.read_csv(runs / "golden" / "oof.csv", dtype={"group": str}).drop(columns=["path"])
    return {"metrics": metrics.drop(columns=TIMINGS), "oof": oof, "submission": out.read_bytes()}


@pytest.mark.slow
def test_the_golden_cv_and_submission_are_unchanged(tmp_path, monkeypatch, request):
    got = golden_run(tmp_path, monkeypatch)
    if request.config.getoption("--record-golden"):
        GOLDEN.mkdir(exist_ok=True)
        got["metrics"].to_csv(GOLDEN / "metrics.csv", index=False)
        got["oof"].to_csv(GOLDEN / "oof.csv", index=False)
        (GOLDEN / "submission.csv").write_bytes(got["submission"])
        (GOLDEN / "recorded.json").write_text(json.dumps({"cpu": cpu_model()}, indent=1) + "\n")
    same_cpu = json.loads((GOLDEN / "recorded.json").read_text())["cpu"] == cpu_model()
    tol = 1e-6 if same_cpu else 2e-3
    want = pd.read_csv(GOLDEN / "metrics.csv")
    assert list(got["metrics"].columns) == list(want.columns)
    pd.testing.assert_frame_equal(got["metrics"].reset_index(drop=True), want, check_exact=False, atol=tol, rtol=0)
    oof, ref = got["oof"], pd.read_csv(GOLDEN / "oof.csv", dtype={"group": str})
    assert list(oof.columns) == list(ref.columns) and (oof["image"] == ref["image"]).all()
    probs = [c for c in ref.columns if c.startswith("p") and c[1:].isdigit()]
    assert np.abs(oof[probs].to_numpy() - ref[probs].to_numpy()).max() <= tol
    if same_cpu:
        assert got["submission"] == (GOLDEN / "submission.csv").read_bytes()
    else:
        sub, ref_sub = (pd.read_csv(p) for p in (tmp_path / "sub.csv", GOLDEN / "submission.csv"))
        assert (sub["ImageID"] == ref_sub["ImageID"]).all() and (sub["ans"] == ref_sub["ans"]).mean() >= 0.95
