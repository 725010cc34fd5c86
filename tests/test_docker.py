"""No Docker engine here: lint the Dockerfile and check it installs what `make` installs."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_base_is_an_argument_with_a_pinned_default():
    default = re.search(r"^ARG BASE=(\S+)", DOCKERFILE, re.M).group(1)
    assert default.startswith("debian:bookworm-") and not default.endswith(":latest")
    assert re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M) == ["${BASE}", "${BASE}"]
    assert "add-apt-repository" not in DOCKERFILE  # no PPA


def test_installs_from_the_same_lock_as_make():
    makefile = (ROOT / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile and "LOCK := requirements.lock" in makefile
    assert "pip install --require-hashes -r /tmp/requirements.lock" in DOCKERFILE
    assert "pip install --no-deps -e /app" in DOCKERFILE
    # No second source of versions: torch & co. are pinned only in pyproject.toml and the lock.
    assert not re.search(r"(torch|timm|albumentations)==", DOCKERFILE)


def test_extra_certificates_stay_in_the_build_stage():
    final = DOCKERFILE[DOCKERFILE.rindex("\nFROM "):]
    assert "COPY certs/" in DOCKERFILE and "certs" not in final
    assert "/certs/*" in (ROOT / ".gitignore").read_text()


@pytest.mark.parametrize("path", ["/app/data", "/app/runs", "/app/submissions"])
def test_mount_points_and_non_root_user(path):
    assert path in DOCKERFILE
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_makefile_documents_every_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z_-]*):(?!=)", makefile, re.M)
    undocumented = [t for t in targets if not re.search(rf"^{t}:.*## ", makefile, re.M)]
    assert not undocumented
    for t in ("train", "submit", "test", "docker-build", "docker-train", "docker-submit", "help"):
        assert t in targets
