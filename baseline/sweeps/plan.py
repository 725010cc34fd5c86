"""A sweep file in W&B's format (grid / random / bayes, its parameters' distributions, run_cap, hyperband
early_terminate) read and checked into a Plan for Optuna: every key W&B defines is mapped or refused by
name, before any trial runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from ..config import ConfigError, load_config
from .launch import override

METHODS = ("grid", "random", "bayes")
MAPPED = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values", "log_uniform"}
# W&B distributions without an Optuna counterpart: refused by name before any trial runs.
REFUSED = {
    "q_log_uniform_values": "Optuna cannot quantise a log scale", "q_log_uniform": "Optuna cannot quantise a log scale",
    "inv_log_uniform_values": "Optuna has no inverse-log distribution",
    "inv_log_uniform": "Optuna has no inverse-log distribution",
    "normal": "Optuna samples bounded ranges only", "q_normal": "Optuna samples bounded ranges only",
    "log_normal": "Optuna samples bounded ranges only", "q_log_normal": "Optuna samples bounded ranges only",
    "beta": "Optuna has no beta distribution", "q_beta": "Optuna has no beta distribution",
}
PARAM_KEYS = {"values", "value", "distribution", "min", "max", "q", "mu", "sigma", "probabilities", "a", "b"}
TOP_KEYS = {"program", "method", "metric", "parameters", "run_cap", "command", "name", "description",
            "early_terminate", "project", "entity"}
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}
METRICS = ("val_f1", "val_acc", "val_loss")  # what every epoch records and summary.json keeps
DEFAULT_CAP = 10  # random / bayes without run_cap (W&B would run until stopped)


# ---------------------------------------------------------------- the sweep file
def sweep_file(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = resources.files("baseline") / "configs" / "sweeps" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError(f"sweep '{name_or_path}' is neither a file nor a packaged sweep (grid, random, bayes)")


def read_sweep(path: Path) -> dict:
    try:
        spec = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"sweep file '{path}' is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"sweep file '{path}' must be a mapping")
    return spec


@dataclass(frozen=True)
class Plan:
    """A W&B sweep file in Optuna's terms; also stored on the study so that every worker (and every
    trial's own run) reads the same one."""

    name: str
    method: str
    metric: str
    goal: str
    space: dict[str, BaseDistribution]  # searched parameters
    constants: dict  # `value:` parameters, passed to every trial
    cap: int  # trials to run in all, over every worker
    hyperband: dict | None  # HyperbandPruner's arguments
    target: float | None  # stop the sweep once a trial reaches it

    def sampler(self, seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
        if self.method == "grid":
            return optuna.samplers.GridSampler({k: list(d.choices) for k, d in self.space.items()}, seed=seed)
        if self.method == "random":
            return TrialSeededRandom(seed)
        return TrialSeededTPE(seed, startup_trials)

    def record(self) -> dict:
        return {"method": self.method, "metric": self.metric, "goal": self.goal, "cap": self.cap,
                "hyperband": self.hyperband, "target": self.target, "constants": self.constants,
                "space": {k: optuna.distributions.distribution_to_json(d) for k, d in self.space.items()}}


class TrialSeededRandom(optuna.samplers.RandomSampler):
    """Trial n's draws depend on (seed, n) only: one worker's sweep is reproducible, and workers that
    share a study never draw each other's parameters."""

    def __init__(self, seed: int):
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        self._rng.rng.seed([self._base_seed, trial.number])


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose startup trials are exactly random's (same seed, same trial numbers)."""

    def __init__(self, seed: int, startup_trials: int):
        super().__init__(seed=seed, n_startup_trials=startup_trials)
        self._random_sampler = TrialSeededRandom(seed)
        self._base_seed = seed

    def before_trial(self, study, trial) -> None:
        self._rng.rng.seed([self._base_seed, trial.number, 1])
        super().before_trial(study, trial)


def plan_sweep(spec: dict, path: Path, epochs: int) -> Plan:
    """Validate a W&B sweep file and map it onto Optuna; refuse what cannot be mapped, naming the key."""
    where = f"sweep file '{path}'"
    unknown = set(spec) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    method = spec.get("method")
    if method not in METHODS:
        raise ConfigError(f"{where}: method must be one of {list(METHODS)}, got {method!r}")
    metric = spec.get("metric") or {}
    if metric.get("goal") not in ("maximize", "minimize") or not metric.get("name"):
        raise ConfigError(f"{where}: metric needs name and goal (maximize | minimize)")
    if metric["name"] not in METRICS:
        raise ConfigError(f"{where}: metric.name '{metric['name']}' is not one the runs record ({', '.join(METRICS)})")
    if set(metric) - {"name", "goal", "target"}:
        raise ConfigError(f"{where}: metric has unknown key(s) {sorted(set(metric) - {'name', 'goal', 'target'})}")
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping of config keys")
    space, constants = {}, {}
    for key, p in params.items():
        kind = parameter(key, p, method, where)
        check_values(key, kind, where)
        if isinstance(kind, BaseDistribution):
            space[key] = kind
        else:
            constants[key] = kind[1]
    if not space:
        raise ConfigError(f"{where}: every parameter is a constant; nothing to search")
    if "train.monitor" in space or constants.get("train.monitor", metric["name"]) != metric["name"]:
        raise ConfigError(f"{where}: train.monitor is set by metric.name ({metric['name']}): a trial's best epoch, "
                          "checkpoint and reported value are all by that metric; drop train.monitor from parameters")
    return Plan(name=str(spec.get("name") or Path(path).stem), method=method, metric=metric["name"],
                goal=metric["goal"], space=space, constants=constants, cap=trial_cap(spec, space, where),
                hyperband=hyperband(spec.get("early_terminate"), epochs, where), target=metric.get("target"))


def parameter(key: str, p, method: str, where: str):
    """An Optuna distribution, or ("constant", value)."""
    if not isinstance(p, dict) or not set(p) <= PARAM_KEYS:
        raise ConfigError(f"{where}: parameter '{key}' must be a mapping with keys from {sorted(PARAM_KEYS)}")
    dist = p.get("distribution") or inferred_distribution(p)
    if dist is None:
        raise ConfigError(f"{where}: parameter '{key}' needs values, value or a distribution")
    if dist in REFUSED:
        raise ConfigError(f"{where}: parameter '{key}': distribution '{dist}' cannot run locally ({REFUSED[dist]}); "
                          "use another distribution, or W&B's server (make sweep-agent)")
    if dist not in MAPPED:
        raise ConfigError(f"{where}: parameter '{key}' has unknown distribution '{dist}'")
    if "probabilities" in p:
        raise ConfigError(f"{where}: parameter '{key}': probabilities (a weighted categorical) cannot run locally")
    if dist == "constant" or "value" in p:
        if "value" not in p:
            raise ConfigError(f"{where}: parameter '{key}' (constant) needs value")
        return ("constant", p["value"])
    if "values" in p:
        if not isinstance(p["values"], list) or not p["values"]:
            raise ConfigError(f"{where}: parameter '{key}': values must be a non-empty list")
        return CategoricalDistribution([choice(v) for v in p["values"]])
    d = numeric_distribution(key, p, dist, where)
    if method != "grid":
        return d
    if dist in ("int_uniform", "q_uniform"):  # a grid can enumerate these
        n = int(round((d.high - d.low) / d.step)) + 1
        return CategoricalDistribution([d.low + i * d.step if dist == "int_uniform" else round(d.low + i * d.step, 10)
                                        for i in range(n)])
    raise ConfigError(f"{where}: grid parameter '{key}' needs values (a grid cannot enumerate '{dist}')")


def inferred_distribution(p: dict) -> str | None:
    """W&B's rule when `distribution` is left out."""
    if "value" in p:
        return "constant"
    if "values" in p:
        return "categorical"
    if "min" in p and "max" in p:
        ints = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    return None


def numeric_distribution(key: str, p: dict, dist: str, where: str) -> BaseDistribution:
    if "min" not in p or "max" not in p:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}) needs min and max")
    lo, hi = p["min"], p["max"]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi)) or not lo < hi:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}): expected numbers min < max, got {lo!r}, {hi!r}")
    if dist == "int_uniform":
        return IntDistribution(int(lo), int(hi))
    if dist == "uniform":
        return FloatDistribution(float(lo), float(hi))
    if dist == "q_uniform":
        return FloatDistribution(float(lo), float(hi), step=float(p.get("q", 1.0)))
    if dist == "log_uniform":  # W&B: min and max are natural-log exponents
        return FloatDistribution(math.exp(lo), math.exp(hi), log=True)
    if lo <= 0:
        raise ConfigError(f"{where}: parameter '{key}' ({dist}) needs min > 0, got {lo!r}")
    return FloatDistribution(float(lo), float(hi), log=True)


def choice(v):
    """Optuna's categorical holds scalars; a list or mapping value travels as its flow-YAML text,
    which is also how the trial's `key=value` override writes it."""
    return yaml.safe_dump(v, default_flow_style=True).strip() if isinstance(v, (list, dict)) else v


def check_values(key: str, kind, where: str) -> None:
    """Every value a parameter can take is a valid config value (the ends of a range)."""
    if isinstance(kind, CategoricalDistribution):
        samples = kind.choices
    elif isinstance(kind, BaseDistribution):
        samples = (kind.low, kind.high)
    else:
        samples = (kind[1],)
    for sample in samples:
        try:
            load_config(None, [override(key, sample)])
        except ConfigError as e:
            raise ConfigError(f"{where}: parameter '{key}': {e}") from None


def trial_cap(spec: dict, space: dict, where: str) -> int:
    cap = spec.get("run_cap")
    if cap is not None and (not isinstance(cap, int) or cap < 1):
        raise ConfigError(f"{where}: run_cap must be a positive integer, got {cap!r}")
    if spec["method"] == "grid":
        size = math.prod(len(d.choices) for d in space.values())
        return min(size, cap) if cap else size
    return cap or DEFAULT_CAP


def hyperband(et, epochs: int, where: str) -> dict | None:
    """W&B's early_terminate -> HyperbandPruner(min_resource, max_resource, reduction_factor) in epochs."""
    if not et:
        return None
    if not isinstance(et, dict) or set(et) - HYPERBAND_KEYS:
        raise ConfigError(f"{where}: early_terminate has unknown key(s) "
                          f"{sorted(set(et) - HYPERBAND_KEYS) if isinstance(et, dict) else et}")
    if et.get("type") != "hyperband":
        raise ConfigError(f"{where}: early_terminate.type must be hyperband, got {et.get('type')!r}")
    if et.get("strict"):
        raise ConfigError(f"{where}: early_terminate.strict: true has no Optuna counterpart (remove it)")
    eta = et.get("eta", 3)
    if not isinstance(eta, int) or eta < 2:
        raise ConfigError(f"{where}: early_terminate.eta must be an integer >= 2, got {eta!r}")
    if "min_iter" in et and "s" not in et:
        lo, hi = et["min_iter"], et.get("max_iter", epochs)
    elif "max_iter" in et and "s" in et and "min_iter" not in et:
        hi = et["max_iter"]
        lo = max(1, round(hi / eta ** et["s"])) if isinstance(hi, int) and isinstance(et["s"], int) else None
    else:
        raise ConfigError(f"{where}: early_terminate needs min_iter (optionally max_iter), or max_iter with s")
    if not all(isinstance(x, int) for x in (lo, hi)) or not 1 <= lo <= hi:
        raise ConfigError(f"{where}: early_terminate: expected integer epochs 1 <= min_iter <= max_iter, "
                          f"got {lo!r}, {hi!r}")
    return {"min_resource": lo, "max_resource": hi, "reduction_factor": eta}
