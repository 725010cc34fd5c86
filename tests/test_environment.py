"""The environment: requirements.lock pins every package of pyproject.toml, hashed; the venv was
installed from it; checkpoints record its hash."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from baseline import checkpoint

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"


def locked() -> dict[str, list[tuple[str, str, int]]]:
    """name -> [(version, marker, number of hashes)] from the lock."""
    pins: dict[str, list[tuple[str, str, int]]] = {}
    text = LOCK.read_text()
    for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+)(?: ; ([^\\\n]+))?((?:\s*\\\n\s+--hash=\S+)*)", text, re.M):
        pins.setdefault(canonicalize_name(m[1]), []).append((m[2], (m[3] or "").strip(), m[4].count("--hash=")))
    return pins


def applies(marker: str) -> bool:
    return not marker or Marker(marker).evaluate()


def test_every_requirement_of_pyproject_is_locked_at_a_version_it_allows():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} is in pyproject.toml but not in requirements.lock: run `make lock`"
        for version, marker, _ in pins[name]:
            if applies(marker):
                assert req.specifier.contains(version, prereleases=True), (
                    f"requirements.lock has {name}=={version}, pyproject.toml asks {req.specifier}: run `make lock`")


def test_every_locked_package_is_hashed_and_installed_at_its_version():
    pins = locked()
    assert len(pins) > 50  # the whole tree, not just the top level
    for name, entries in pins.items():
        for version, marker, hashes in entries:
            assert hashes >= 1, f"{name}=={version} has no hash"
            if applies(marker):
                assert metadata.version(name) == version, f"installed {name} differs from the lock's {version}"


def test_pip_check_passes():
    r = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_checkpoint_provenance_names_the_lock():
    import hashlib

    prov = checkpoint.provenance()
    assert prov["lock_sha256"] == hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16]
    assert prov["versions"]["torch"] == metadata.version("torch")


def test_make_clean_keeps_the_teams_ledger(tmp_path):
    """submissions/ledger.csv is the team's record of every upload: `make clean` removes runs and
    submission files, never it."""
    import shutil

    shutil.copy(Path(__file__).resolve().parent.parent / "Makefile", tmp_path / "Makefile")
    (tmp_path / "submissions").mkdir()
    (tmp_path / "runs" / "r").mkdir(parents=True)
    for name in ("ledger.csv", "a.csv", "b.csv"):
        (tmp_path / "submissions" / name).write_text("x\n")
    subprocess.run(["make", "clean"], cwd=tmp_path, check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "submissions").iterdir()) == ["ledger.csv"]
    assert not (tmp_path / "runs").exists()


def test_make_train_writes_the_built_in_data_only_for_runs_on_it(tmp_path):
    root = Path(__file__).resolve().parent.parent
    missing = f"DATA={tmp_path / 'synth'}"

    def plan(*args: str) -> str:
        return subprocess.run(["make", "-n", *args, missing], cwd=root, check=True, capture_output=True,
                              text=True).stdout

    assert "data synth" in plan("train") and "data synth" in plan("cv")
    assert "data synth" not in plan("train", "ARGS=data.root=/team/mask train.epochs=3")
    assert "data synth" not in plan("cv", "CONFIG=configs/team.yaml")
