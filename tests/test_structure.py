"""The package's structure: the import floors declared in pyproject.toml ([tool.importlinter]) hold, so no
import runs upward or across a wing (train, submit, sweeps, audit)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_no_import_runs_upward_or_across_a_wing():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "1 kept, 0 broken" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
