"""Sweeps in W&B's own file format: a local runner (grid / seeded random) and the W&B agent.

The same YAML works with `wandb sweep FILE` (its `command:` block runs our trainer with
`${args_no_hyphens}`, i.e. `key=value` overrides, so every DDP rank reads the same parameters from
its argv) and with `baseline sweep FILE`, which needs no W&B server.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import subprocess
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .config import ConfigError, load_config, to_dict
from .dist import launch_command

log = logging.getLogger("baseline")

METHODS = {"grid", "random", "bayes"}
# The distributions W&B documents; the local runner samples the ones in SAMPLERS.
WANDB_DISTRIBUTIONS = {
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values", "q_log_uniform_values",
    "inv_log_uniform_values", "log_uniform", "q_log_uniform", "inv_log_uniform", "normal", "q_normal",
    "log_normal", "q_log_normal", "beta", "q_beta",
}
PARAM_KEYS = {"values", "value", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "a", "b"}
TOP_KEYS = {"program", "method", "metric", "parameters", "run_cap", "command", "name", "description",
            "early_terminate", "project", "entity"}


def sweep_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = resources.files("baseline") / "configs" / "sweeps" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"sweep '{name_or_path}' is neither a file nor a packaged sweep (grid, random)")


def read_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file '{path}' must be a mapping")
    return spec


def validate_sweep(spec: dict, path: Path) -> None:
    """The sweep's keys, method and distributions, and every parameter against our config."""
    where = f"sweep file '{path}'"
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    if spec.get("method") not in METHODS:
        raise ConfigError(f"{where}: method must be one of {sorted(METHODS)}, got {spec.get('method')!r}")
    if spec["method"] == "bayes":
        raise ConfigError(f"{where}: bayes needs the W&B server; run it with `make sweep-agent` (or use grid/random)")
    metric = spec.get("metric") or {}
    if metric.get("goal") not in ("maximize", "minimize") or not metric.get("name"):
        raise ConfigError(f"{where}: metric needs name and goal (maximize | minimize)")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping of config keys")
    for key, p in params.items():
        if not isinstance(p, dict) or not set(p) <= PARAM_KEYS:
            raise ConfigError(f"{where}: parameter '{key}' must be a mapping with keys from {sorted(PARAM_KEYS)}")
        dist = p.get("distribution")
        if dist is not None and dist not in WANDB_DISTRIBUTIONS:
            raise ConfigError(f"{where}: parameter '{key}' has unknown distribution '{dist}'")
        if "values" not in p and "value" not in p and dist is None:
            raise ConfigError(f"{where}: parameter '{key}' needs values, value or a distribution")
        if dist and dist not in SAMPLERS and "values" not in p and "value" not in p:
            raise ConfigError(f"{where}: parameter '{key}': the local runner samples {sorted(SAMPLERS)}, not '{dist}'")
        if spec["method"] == "grid" and "values" not in p and "value" not in p:
            raise ConfigError(f"{where}: grid parameter '{key}' needs values (a grid cannot enumerate a distribution)")
        if dist in SAMPLERS and ("min" not in p or "max" not in p):
            raise ConfigError(f"{where}: parameter '{key}' ({dist}) needs min and max")
        for sample in _examples(p):
            try:
                load_config(None, [override(key, sample)])
            except ConfigError as e:
                raise ConfigError(f"{where}: parameter '{key}': {e}") from None


def _examples(p: dict) -> list:
    if "values" in p:
        return list(p["values"])
    if "value" in p:
        return [p["value"]]
    return [SAMPLERS[p["distribution"]](p, np.random.default_rng(0))]


def _q(x: float, q: float) -> float:
    return round(float(np.round(x / q) * q), 10)  # 0.15, not 0.15000000000000002


SAMPLERS = {
    "uniform": lambda p, r: float(r.uniform(p["min"], p["max"])),
    "int_uniform": lambda p, r: int(r.integers(p["min"], p["max"] + 1)),
    "q_uniform": lambda p, r: _q(r.uniform(p["min"], p["max"]), p.get("q", 1.0)),
    "log_uniform_values": lambda p, r: float(math.exp(r.uniform(math.log(p["min"]), math.log(p["max"])))),
    "categorical": lambda p, r: p["values"][r.integers(len(p["values"]))],
    "constant": lambda p, r: p["value"],
}


def override(key: str, value) -> str:
    """`key=value` as our CLI (and W&B's ${args_no_hyphens}) writes it."""
    if isinstance(value, (list, dict)):
        return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value}"


def trials(spec: dict, seed: int) -> list[dict]:
    """The parameter sets to run: the full grid, or `run_cap` seeded random draws."""
    params = spec["parameters"]
    if spec["method"] == "grid":
        keys = list(params)
        choices = [params[k]["values"] if "values" in params[k] else [params[k]["value"]] for k in keys]
        out = [dict(zip(keys, combo)) for combo in itertools.product(*choices)]
        return out[: spec["run_cap"]] if spec.get("run_cap") else out
    rng = np.random.default_rng(seed)
    n = int(spec.get("run_cap") or 10)
    out = []
    for _ in range(n):
        trial = {}
        for k, p in params.items():
            if "value" in p:
                trial[k] = p["value"]
            elif "values" in p and "distribution" not in p:
                trial[k] = p["values"][rng.integers(len(p["values"]))]
            else:
                trial[k] = SAMPLERS[p["distribution"]](p, rng)
        out.append(trial)
    return out


def trial_name(i: int, trial: dict) -> str:
    h = hashlib.sha1(repr(sorted(trial.items())).encode()).hexdigest()[:6]
    return f"trial{i:03d}-{h}"


def train_command(nproc: int) -> list[str]:
    return launch_command(nproc, ["train"])


def run_local(name_or_path: str, config_file: str | None, base_overrides: list[str], nproc: int = 1) -> pd.DataFrame:
    """Run every trial as its own run under runs/sweeps/<sweep>/; finished trials are skipped."""
    path = sweep_file(name_or_path)
    base = load_config(config_file, base_overrides)
    spec = read_sweep(path)
    validate_sweep(spec, path)
    sweep_dir = Path(base.run.dir) / "sweeps" / (spec.get("name") or path.stem)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    metric, goal = spec["metric"]["name"], spec["metric"]["goal"]
    rows = []
    todo = trials(spec, base.seed)
    for i, trial in enumerate(todo):
        name = trial_name(i, trial)
        run_dir = sweep_dir / name
        summary = run_dir / "summary.json"
        row = {"trial": name, **trial}
        if summary.is_file():
            log.info("sweep %s: %s already finished, skipped", sweep_dir.name, name)
        else:
            log.info("sweep %s: trial %d/%d %s %s", sweep_dir.name, i + 1, len(todo), name, trial)
            args = [*(["--config", config_file] if config_file else []), *base_overrides,
                    *[override(k, v) for k, v in trial.items()], f"run.dir={sweep_dir}", f"run.name={name}",
                    f"log.wandb.group={base.log.wandb.group or sweep_dir.name}"]
            r = subprocess.run([*train_command(nproc), *args], capture_output=True, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if r.returncode != 0:
                err = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
                (sweep_dir / f"{name}.failed.log").write_text(r.stdout + r.stderr)
                log.warning("sweep %s: %s failed: %s", sweep_dir.name, name, err)
                rows.append({**row, "status": "failed", metric: None, "error": err})
                continue
        s = json.loads(summary.read_text())
        rows.append({**row, "status": "finished", metric: s.get(metric, s.get("best_metric")),
                     "best_epoch": s.get("best_epoch"), "error": ""})
    table = pd.DataFrame(rows).sort_values(metric, ascending=goal == "minimize", na_position="last")
    table.to_csv(sweep_dir / "results.csv", index=False)
    finished = table[table.status == "finished"]
    if len(finished):
        write_best_config(sweep_dir / finished.trial.iloc[0] / "config.yaml", sweep_dir / "best.yaml")
    return table


def write_best_config(run_config: Path, out: Path) -> None:
    """The best trial's resolved config, with its sweep-only run keys reset: ready for --config."""
    cfg = load_config(run_config)
    cfg = replace(cfg, run=replace(cfg.run, name="", dir="runs", resume=""))
    cfg.log.wandb.group = ""
    out.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))

