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


def test_makefile_documents_every_target():
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^([a-z][a-z_-]*):(?!=)", makefile, re.M)
    undocumented = [t for t in targets if not re.search(rf"^{t}:.*## ", makefile, re.M)]
    assert not undocumented
    for t in ("train", "submit", "test", "docker-build", "docker-train", "docker-submit", "help"):
        assert t in targets


def docker_ready() -> str:
    """'' when a Docker daemon answers (started here if installed but not running), else why not."""
    if not shutil.which("docker"):
        return "no docker client (make docker-smoke installs docker.io)"
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return ""
    if not shutil.which("dockerd"):
        return "no Docker daemon installed (make docker-smoke installs docker.io)"
    import os
    import time

    if os.geteuid() != 0:
        return "a Docker daemon is installed but not running, and starting one needs root"
    subprocess.Popen(["dockerd"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(60):
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return ""
        time.sleep(1)
    return "dockerd did not answer within 60 s"


@pytest.mark.slow
def test_dockerfile_builds_from_the_base_argument(tmp_path):
    """The real Dockerfile, from the local bookworm base that make docker-smoke imports, with a
    one-package lock (the full lock is the smoke's job: gigabytes of CUDA wheels)."""
    why = docker_ready()
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    base = "baseline-base:bookworm"
    if subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode != 0:
        if not shutil.which("debootstrap"):
            pytest.skip(f"no {base} image and no debootstrap to make one (make docker-smoke makes it)")
        root = tmp_path / "rootfs"
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
                       check=True, capture_output=True)
        subprocess.run(f"tar -C {root} -c . | docker import - {base}", shell=True, check=True, capture_output=True)
    tag = "baseline:test-build"
    ca = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    copied = [ROOT / "certs" / c.name for c in ca if not (ROOT / "certs" / c.name).exists()]
    try:
        for c in copied:
            shutil.copy(Path("/usr/local/share/ca-certificates") / c.name, c)
        r = subprocess.run(["docker", "build", "-q", "--build-arg", f"BASE={base}", "--build-arg",
                            "LOCK=tests/docker/tiny.lock", "-t", tag, str(ROOT)], capture_output=True, text=True)
    finally:
        for c in copied:
            c.unlink()
    assert r.returncode == 0, r.stderr[-3000:]
    run = subprocess.run(["docker", "run", "--rm", tag, "sh", "-c",
                          "id -u && python -c 'import yaml, baseline; print(baseline.__file__)' && "
                          "ls /app/requirements.lock && (ls /usr/local/share/ca-certificates/ 2>/dev/null | wc -l) && "
                          "for d in data runs submissions; do touch /app/$d/x && echo $d; done"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    uid, module, lock, extra_cas, *mounts = run.stdout.split()
    assert uid == "1000" and module == "/app/baseline/__init__.py" and lock == "/app/requirements.lock"
    assert mounts == ["data", "runs", "submissions"]  # the mount points exist and the (non-root) user writes them
    assert extra_cas == "0"  # the build stage's certificates stayed there
    history = subprocess.run(["docker", "history", "--no-trunc", tag], capture_output=True, text=True).stdout
    assert "certs" not in history
