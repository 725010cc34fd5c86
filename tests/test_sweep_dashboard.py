"""`baseline sweep-dashboard NAME`: optuna-dashboard on the sweep's study, loaded in a real headless browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from tests.test_engine import clean_env
from tests.test_feeding import _free_port


def browser() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/chromium should have installed it")
        pytest.skip("chromium is not installed (apt-get install chromium, or run .ci/chromium as root)")
    return path


def rendered_text(chrome: str, url: str) -> str:
    """What the page shows once its JavaScript has run (headless Chromium's DOM, tags stripped)."""
    dom = subprocess.run([chrome, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True,
                         timeout=120).stdout
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.mark.slow
def test_the_dashboard_shows_the_study_and_its_trials(tmp_path):
    chrome = browser()
    sweep = tmp_path / "runs" / "sweeps" / "lr_sweep"
    sweep.mkdir(parents=True)
    study = optuna.create_study(study_name="lr_sweep", storage=f"sqlite:///{sweep / 'study.db'}", direction="maximize")
    for i in range(3):
        trial = study.ask()
        trial.suggest_float("optim.lr", 1e-4, 1e-2, log=True)
        study.tell(trial, 0.5 + i / 10)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "baseline", "sweep-dashboard", "lr_sweep", "--port", str(port),
                               f"run.dir={tmp_path / 'runs'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=clean_env())
    try:
        first = server.stdout.readline()
        assert "sweep 'lr_sweep' (3 trials" in first and f"http://127.0.0.1:{port}/dashboard/studies/1" in first, first
        address = re.search(r"http://\S+", first).group(0)
        for _ in range(100):  # the server answers a moment after it says where
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        text = rendered_text(chrome, f"{address}/trials")
        assert "lr_sweep" in text and "3 Trials" in text, text[:1000]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_missing_sweep_is_one_line(tmp_path, capsys):
    from baseline.cli import main

    assert main(["sweep-dashboard", "nope", f"run.dir={tmp_path}"]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err
