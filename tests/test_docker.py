"""No Docker engine here: lint the Dockerfile and check it installs what `make` installs."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([exe, str(ROOT / "Dockerfile")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_base_image_is_pinned_cuda():
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE, re.M).group(1)
    assert base.startswith("nvidia/cuda:") and not base.endswith(":latest")
    assert re.match(r"nvidia/cuda:\d+\.\d+\.\d+-", base)


def test_installs_from_the_same_pinned_file_as_make():
    makefile = (ROOT / "Makefile").read_text()
    assert "COPY pyproject.toml" in DOCKERFILE and re.search(r"pip install \.(\s|$)", DOCKERFILE)
    assert re.search(r"pip install .*-e '\.\[dev\]'", makefile)
    # No second source of versions: torch & co. are pinned only in pyproject.toml.
    assert not re.search(r"(torch|timm|albumentations)==", DOCKERFILE)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {d.split("==")[0]: d.split("==")[1] for d in deps if "==" in d}
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


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
