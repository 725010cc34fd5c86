"""sweep.executor=ray on a real two-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head
and a second node, one CPU each), with tiny trials: a 4-point grid interrupted after two trials and resumed
(each point once, the finished ones not run again, sweep-report reads it), and hyperband stopping a trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from tests.conftest import tiny_overrides
from tests.test_engine import clean_env

pytestmark = pytest.mark.slow
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


@pytest.fixture(scope="module")
def ray_cluster():
    from ray.cluster_utils import Cluster

    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(f"two-node Ray cluster up in {time.perf_counter() - t0:.1f}s at {cluster.address}")
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


def sweep_file(tmp_path: Path, name: str, lrs: list[float], hyperband: bool = False) -> Path:
    lines = [f"name: {name}", "method: grid", "metric: {name: val_loss, goal: minimize}", "parameters:",
             f"  optim.lr: {{values: {lrs}}}"]
    if hyperband:
        lines.append("early_terminate: {type: hyperband, min_iter: 1, eta: 2}")
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_sweep(path: Path, root: Path, runs: Path, address: str, **extra) -> subprocess.Popen:
    over = tiny_overrides(root, runs, **{"sweep.executor": "ray", "sweep.ray_address": address, **extra})
    return subprocess.Popen([sys.executable, "-m", "baseline", "sweep", str(path), *over], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=clean_env())


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_hyperband_stops_a_trial_and_ends_its_process_group(ray_cluster, synth_root, tmp_path):
    from baseline.sweeps.ray_sweep import group_alive

    lrs = [0.02, 0.01, 1e-6, 1e-7]  # two that learn, two that cannot: ASHA stops at least one of those
    # 8 epochs: a tiny epoch takes a tenth of a second and the trainable polls metrics.csv every half second;
    # a stop that reaches a run after its last epoch is no prune (the run finished)
    rc, out = finish(start_sweep(sweep_file(tmp_path, "hb", lrs, hyperband=True), synth_root, tmp_path / "runs",
                                 ray_cluster, **{"train.epochs": 8}), timeout=300)
    assert rc == 0, out[-3000:]
    sweep = tmp_path / "runs" / "sweeps" / "hb"
    table = pd.read_csv(sweep / "results.csv")
    pruned = table[table.status == "pruned"]
    assert len(table) == 4 and len(pruned) >= 1, table.to_string()
    assert (pruned.pruned_epoch < 8).all() and (table[table.status == "complete"].epochs == 8).all()
    for name in pruned.trial:
        pgid = int((sweep / f"{name}.pgid").read_text())
        assert not group_alive(pgid)  # the trial's run and anything it started are gone
        assert not any(f"run.name={name}" in cmd for cmd in cmdlines())


def complete(sweep: Path, name: str) -> list[str]:
    if not (sweep / "study.db").is_file():
        return []
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep / 'study.db'}")
    except KeyError:
        return []
    return [t.user_attrs["run"] for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def cmdlines() -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            pass
    return out


def test_a_grid_interrupted_after_two_trials_resumes_each_point_once(ray_cluster, synth_root, tmp_path):
    t0 = time.perf_counter()
    lrs = [0.02, 0.005, 0.001, 0.0002]
    path = sweep_file(tmp_path, "ir", lrs)
    sweep = tmp_path / "runs" / "sweeps" / "ir"
    proc = start_sweep(path, synth_root, tmp_path / "runs", ray_cluster)
    waited = time.time()
    while len(complete(sweep, "ir")) < 2:  # two trials finished, as the study records them
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - waited < 240, "two trials did not finish in time"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    rc, out = finish(proc)
    assert rc == 130, out[-3000:]
    done = {name: (sweep / name / "summary.json").stat().st_mtime_ns for name in complete(sweep, "ir")}
    assert 2 <= len(done) < 4
    rc, out = finish(start_sweep(path, synth_root, tmp_path / "runs", ray_cluster))
    assert rc == 0, out[-3000:]
    table = pd.read_csv(sweep / "results.csv")
    assert len(table) == 4 and sorted(table["optim.lr"]) == sorted(lrs) and (table.status == "complete").all()
    assert sorted(table.trial) == ["trial000", "trial001", "trial002", "trial003"]
    for name, mtime in done.items():  # finished before the interruption: not run again
        assert (sweep / name / "summary.json").stat().st_mtime_ns == mtime
    for t in table.trial:  # each a real run of the kit, in the sweep's folder
        assert json.loads((sweep / t / "summary.json").read_text())["status"] == "finished"
    study = optuna.load_study(study_name="ir", storage=f"sqlite:///{sweep / 'study.db'}")
    assert len(study.trials) == 4 and (sweep / "best.yaml").is_file()
    report = subprocess.run([sys.executable, "-m", "baseline", "sweep-report", "ir", f"run.dir={tmp_path / 'runs'}"],
                            capture_output=True, text=True, env=clean_env())
    assert report.returncode == 0 and "trial00" in report.stdout, report.stdout + report.stderr
    print(f"4-point grid, interrupted and resumed, on Ray in {time.perf_counter() - t0:.1f}s")


def test_a_grid_that_sets_train_epochs_ends_the_same_under_ray_and_optuna(ray_cluster, synth_root, tmp_path):
    """The sweep file sets train.epochs (1, the base config says 2): every trial is complete, not pruned for
    stopping before the base's epochs, no tell raises when the grid runs out, and both executors write
    the same states, rows and best.yaml."""
    path = tmp_path / "ep.yaml"
    path.write_text("name: ep\nmethod: grid\nmetric: {name: val_loss, goal: minimize}\nparameters:\n"
                    "  optim.lr: {values: [0.01, 0.005]}\n  train.epochs: {value: 1}\n")
    tables, best = {}, {}
    for executor in ("ray", "optuna"):
        runs = tmp_path / executor
        rc, out = finish(start_sweep(path, synth_root, runs, ray_cluster, **{"train.epochs": 2,
                                                                              "sweep.executor": executor}))
        assert rc == 0 and "Traceback" not in out, out[-3000:]
        sweep = runs / "sweeps" / "ep"
        tables[executor] = pd.read_csv(sweep / "results.csv").sort_values("optim.lr").reset_index(drop=True)
        best[executor] = (sweep / "best.yaml").read_text()
    for table in tables.values():
        assert table.status.tolist() == ["complete", "complete"] and table.epochs.tolist() == [1, 1]
    cols = ["status", "optim.lr", "epochs", "val_loss"]
    pd.testing.assert_frame_equal(tables["ray"][cols], tables["optuna"][cols])
    assert best["ray"] == best["optuna"]
