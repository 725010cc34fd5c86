"""`baseline bench contest` (make bench-contest): what each contest technique is worth on contest-like
data (data/contest.py), as eval macro-F1 on each set's clean eval images against one plain run.

Per set and seed: `base`, a plain run (shuffle, official edges: PLAIN) on fold 0 of 3; one run per
switch with the switch's keys added; pipelines: `pseudo` (base's confident test predictions join
training; against `base`; `pseudo_fields` with each field's own threshold, `pseudo_round2` a second round),
`refit` (a 3-fold cv's refit on every fold; against `base`) and `audit`, the
whole default week-two pipeline against its own start: a 3-fold cv with the kit's defaults, `data audit
--corrections`, the cv again with them, each cv's submission scored (with the CV gains overall and like
for like beside the eval gain); `person_vote`, `person_vote_gender`, `per_field` and `all_four` (issue 39,
`beyond_rows`). Every run is a subprocess of the real CLI; scores come from submissions scored against
eval/truth.csv; a switch's run already finished in bench.out is reused (delete it to train it again).
contest_c is held out: nothing was tuned on it."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import dist, files, rundir
from .. import oof as oofs
from ..config import Config, load_config
from ..data.contest import VERSION, write_contest
from ..runfolder import Experiment, RunFolder
from ..submit import ledger, people

log = logging.getLogger("baseline")

SETS = ["contest_a", "contest_b", "contest_c"]  # the last is held out
SWITCHES = {
    "balanced": ["train.sampler=balanced", "train.sampler_power=0.5"],
    "age_edge_58": ["data.age_edges=[30,58]"],
    "cutmix_same_class": ["train.cutmix_same_class=0.5"],
    "avg_top_3": ["train.keep_top_k=3", "train.avg_top_k=3"],
    "balanced+age_edge_58": ["train.sampler=balanced", "train.sampler_power=0.5", "data.age_edges=[30,58]"],
    "face_crop": ["data.crop=face"],
}
PLAIN = ["train.sampler=shuffle", "data.age_edges=[30,60]", "data.drop_ages=[]"]  # base, whatever the defaults
PIPELINES = ["pseudo", "pseudo_fields", "pseudo_round2", "audit", "refit", "person_vote", "person_vote_gender",
             "person_vote_auto", "per_field", "all_four"]
TASKS = ["mask", "gender", "age"]
# the contest's cohort-2 winner's thresholds: each field on its own, mask per state (worn, incorrect, not worn)
FIELD_RULES = ["pseudo.threshold=0", "pseudo.gender=0.9", "pseudo.age=0.8", "pseudo.mask=[0.5,0.95,0.95]"]
# the audit pipeline runs the kit's defaults (at the bench's size and epochs), not PLAIN's
AUDIT_CV = ["train.sampler=auto", "data.age_edges=auto"]


def cli(*args: str) -> None:
    r = subprocess.run([sys.executable, "-m", "baseline", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"baseline {' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()[-400:]}")


def score(root: Path, runs: Path, source: str, out: Path, *extra: str) -> float:
    """Submit `source` (run or experiment folders, comma-separated) and score it against the set's truth;
    unvoted unless `extra` says so (a switch is measured against plain submissions)."""
    cli("submit", f"data.root={root}", f"run.dir={runs}", f"submit.checkpoints=[{source}]", f"submit.out={out}",
        f"submit.ledger={out.parent / 'ledger.csv'}", "log.wandb.mode=disabled", "submit.person_vote=off", *extra)
    return ledger.truth_score(out, root / "eval" / "truth.csv")


def audit_hits(root: Path, issues: Path, fixes: Path) -> dict:
    """How the audit did against the people written wrong (train/injected.csv): injected people among
    the people it lists (any field) and among its sure ones; injected (person, field) pairs among the
    corrections file's rows."""
    injected = pd.read_csv(root / "train" / "injected.csv", dtype=str)
    found = pd.read_csv(issues, dtype={"id": str})
    fix = pd.read_csv(fixes, dtype={"id": str})
    wrong, listed, sure = set(injected["id"]), set(found["id"]), set(found["id"][found["sure"]])
    pairs = set(zip(injected["id"], injected["field"]))
    return {"injected": len(wrong), "listed_hits": len(wrong & listed), "listed": len(listed),
            "sure_hits": len(wrong & sure), "sure": len(sure),
            "fix_hits": sum((i, f) in pairs for i, f in zip(fix["id"], fix["field"])), "fixes": len(fix)}


def train_once(runs: Path, common: list[str], run: str, *extra: str) -> None:
    """`baseline train` into runs/<run>, unless a finished run of an earlier bench is there (reused)."""
    if rundir.state(runs / run) != "finished":
        cli("train", *common, f"run.name={run}", *extra)


def seconds(folder: Path) -> float:
    return float(RunFolder(folder).summary()["train_seconds"])


def one_set(name: str, root: Path, work: Path, seed: int, base: list[str], only: list[str] | None,
            audit_cv: list[str]) -> list[dict]:
    runs = work / f"runs_s{seed}"
    common = [f"data.root={root}", f"run.dir={runs}", f"seed={seed}", *base]
    rows = []

    def train(run: str, *extra: str) -> tuple[float, float]:
        train_once(runs, common, run, *extra)
        return score(root, runs, str(runs / run), work / f"{run}_s{seed}.csv"), seconds(runs / run)

    f1, s = train("base")
    rows.append({"set": name, "seed": seed, "switch": "base", "eval_f1": f1, "seconds": s})
    for sw, keys in SWITCHES.items():
        if only and sw not in only:
            continue
        f1, s = train(sw, *keys)
        rows.append({"set": name, "seed": seed, "switch": sw, "eval_f1": f1, "seconds": s})
    rows += pseudo_rows(name, seed, runs, work, common, only, train)
    rows += beyond_rows(name, root, seed, runs, work, common, only)
    if not only or "audit" in only:
        rows.append({"set": name, **audit_pipeline(root, runs, work, seed, [*common, *audit_cv])})
    if not only or "refit" in only:
        cli("cv", *common, "run.name=cv")
        cv_s = sum(seconds(runs / "cv" / f"fold{k}") for k in range(3))
        cli("refit", str(runs / "cv"), "log.wandb.mode=disabled")
        f1 = score(root, runs, str(runs / "cv" / "refit"), work / f"refit_s{seed}.csv")
        rows.append({"set": name, "seed": seed, "switch": "refit", "eval_f1": f1,
                     "seconds": cv_s + seconds(runs / "cv" / "refit")})
    return rows


def pseudo_rows(name: str, seed: int, runs: Path, work: Path, common: list[str], only: list[str] | None,
                train) -> list[dict]:
    """`pseudo`: base's test predictions at >= 0.9 join base's recipe; `pseudo_fields`: the same with each
    field's own threshold (FIELD_RULES); `pseudo_round2`: the pseudo run labels the test images again (a
    round-2 table) for a second student. Each against `base`; seconds count every run it needs."""
    rows, asked = [], (lambda p: not only or p in only)
    for switch, teacher, rules in (("pseudo", "base", ["pseudo.threshold=0.9"]),
                                   ("pseudo_fields", "base", FIELD_RULES),
                                   ("pseudo_round2", "pseudo", ["pseudo.threshold=0.9"])):
        if not asked(switch) or (switch == "pseudo_round2" and not asked("pseudo")):
            continue
        table = work / f"table_{switch}_s{seed}.csv"  # beside the submissions, not over them
        cli("pseudo", *common, f"submit.checkpoints=[{runs / teacher}]", *rules, f"pseudo.out={table}")
        f1, s = train(switch, f"data.pseudo={table}")
        before = sum(seconds(runs / r) for r in ("base", "pseudo")[:1 + (teacher == "pseudo")])
        rows.append({"set": name, "seed": seed, "switch": switch, "eval_f1": f1, "seconds": s + before,
                     "pseudo_rows": len(pd.read_csv(table))})
    return rows


def beyond_rows(name: str, root: Path, seed: int, runs: Path, work: Path, common: list[str],
                only: list[str] | None) -> list[dict]:
    """Issue 39's switches against `base`: `person_vote` (base's submission voted: submit.person_vote=on,
    with the grouping's purity on the eval people and what the out-of-fold check said; `person_vote_gender`
    the gender alone, `person_vote_auto` as submit.person_vote=auto decides from the OOF check), `per_field` (a
    model.task run per field, recombined) and `all_four`: face crops, per-field models, their pseudo-labels
    by field, the students voted."""
    rows, asked = [], (lambda p: not only or p in only)
    row = {"set": name, "seed": seed}
    for switch, mode, fields in (("person_vote", "on", "[gender,age]"), ("person_vote_gender", "on", "[gender]"),
                                 ("person_vote_auto", "auto", "[gender,age]")):
        if not asked(switch):
            continue
        out = work / f"{switch}_s{seed}.csv"
        people.groups_file(out).unlink(missing_ok=True)
        score(root, runs, str(runs / "base"), out, f"submit.person_vote={mode}", f"submit.person_fields={fields}")
        cfg = load_config(None, [f"data.root={root}", f"submit.person_fields={fields}"])
        check = people.oof_check(cfg, RunFolder(runs / "base"), dist.Env())
        rows.append({**row, "switch": switch, "eval_f1": ledger.truth_score(out, root / "eval" / "truth.csv"),
                     "seconds": seconds(runs / "base"), "purity_oof": check["purity"],
                     "oof_gain": check["f1_voted"] - check["f1"], "voted": people.groups_file(out).is_file(),
                     **({"purity_eval": eval_purity(root, out)} if people.groups_file(out).is_file() else {})})
    if asked("per_field"):
        for task in TASKS:
            train_once(runs, common, f"field_{task}", f"model.task={task}")
        f1 = score(root, runs, ",".join(str(runs / f"field_{t}") for t in TASKS), work / f"per_field_s{seed}.csv")
        rows.append({**row, "switch": "per_field", "eval_f1": f1, "seconds": sum(seconds(runs / f"field_{t}")
                                                                                 for t in TASKS)})
    if asked("all_four"):
        rows.append({**row, **all_four(root, seed, runs, work, common)})
    return rows


def all_four(root: Path, seed: int, runs: Path, work: Path, common: list[str]) -> dict:
    """Face-cropped per-field teachers, their test predictions as per-field pseudo-labels (FIELD_RULES),
    face-cropped per-field students trained with them, the students' submission voted."""
    crop = ["data.crop=face"]
    for task in TASKS:
        train_once(runs, common, f"four_teacher_{task}", *crop, f"model.task={task}")
    table = work / f"table_all_four_s{seed}.csv"
    teachers = ",".join(str(runs / f"four_teacher_{t}") for t in TASKS)
    cli("pseudo", *common, f"submit.checkpoints=[{teachers}]", *FIELD_RULES, f"pseudo.out={table}")
    for task in TASKS:
        train_once(runs, common, f"four_{task}", *crop, f"model.task={task}", f"data.pseudo={table}")
    out = work / f"all_four_s{seed}.csv"
    f1 = score(root, runs, ",".join(str(runs / f"four_{t}") for t in TASKS), out, "submit.person_vote=on")
    return {"switch": "all_four", "eval_f1": f1, "purity_eval": eval_purity(root, out),
            "seconds": sum(seconds(runs / f"{k}_{t}") for k in ("four_teacher", "four") for t in TASKS),
            "pseudo_rows": len(pd.read_csv(table))}


def eval_purity(root: Path, submission: Path) -> float:
    """How pure the voted submission's groups are against the eval set's people."""
    groups = pd.read_csv(people.groups_file(submission))
    truth = pd.read_csv(root / "eval" / "people.csv").set_index("ImageID").loc[groups["ImageID"], "person"]
    return people.purity(groups["person"].to_numpy(), truth.to_numpy())


def audit_pipeline(root: Path, runs: Path, work: Path, seed: int, common: list[str]) -> dict:
    """The whole default week-two pipeline: cv -> data audit --corrections -> cv with data.corrections ->
    submit, against the first cv's own submission on the clean eval truth. Beside it the CV differences:
    overall (the second cv validates partly on its own suggestions) and like for like (the images both
    label alike), which must agree with the eval difference."""
    fixes = work / f"fixes_s{seed}.csv"
    cli("cv", *common, "run.name=audit_cv")
    cli("data", "audit", str(runs / "audit_cv"), *common, "--corrections", str(fixes))
    cli("cv", *common, f"data.corrections={fixes}", "run.name=audit_fixed")
    before = score(root, runs, str(runs / "audit_cv"), work / f"audit_cv_s{seed}.csv")
    after = score(root, runs, str(runs / "audit_fixed"), work / f"audit_s{seed}.csv")
    first, fixed = (Experiment(runs / n) for n in ("audit_cv", "audit_fixed"))
    same = oofs.like_for_like(pd.read_csv(first.oof), pd.read_csv(fixed.oof))
    a, b = first.cv(), fixed.cv()
    return {"seed": seed, "switch": "audit", "eval_f1": after,
            "seconds": sum(seconds(runs / n / f"fold{k}") for n in ("audit_cv", "audit_fixed") for k in range(3)),
            "eval_before": before, "eval_gain": after - before, "cv_gain": b["oof_f1"] - a["oof_f1"],
            "cv_gain_like_for_like": same["difference"],
            **audit_hits(root, runs / "audit_cv" / "label_issues.csv", fixes)}


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per set and switch: eval macro-F1 mean (std over seeds), its gain over base seed by seed (the audit's
    over its own first cv; mean ± std), seconds."""
    out = []
    for (s, sw), g in rows.groupby(["set", "switch"], sort=False):
        base = rows[(rows.set == s) & (rows.switch == "base")].set_index("seed")["eval_f1"]
        gain = g.set_index("seed")["eval_f1"] - base.reindex(g["seed"]).to_numpy()
        if sw == "audit":
            gain = g["eval_gain"]
        out.append({"set": s, "switch": sw, "eval_f1": f"{g.eval_f1.mean():.3f} ± {g.eval_f1.std(ddof=0):.3f}",
                    "gain": f"{gain.mean():+.3f} ± {np.std(gain):.3f}", "seconds": round(float(g.seconds.mean()))})
    return pd.DataFrame(out)


def audit_table(rows: pd.DataFrame) -> str:
    """Per set, summed over seeds: recall (injected people found / injected) and precision (found / put
    forward) of the people the audit lists, of its sure ones, and of the corrections file's rows."""
    if "injected" not in rows.columns:
        return ""
    lines = ["| set | injected people | listed: recall, precision | sure: recall, precision | "
             "corrections: recall, precision |", "|---|---|---|---|---|"]
    for s, g in rows.dropna(subset=["injected"]).groupby("set", sort=False):
        n = int(g["injected"].sum())
        cells = []
        for what in ("listed", "sure", "fix"):
            hit, out = int(g[f"{what}_hits"].sum()), int(g["fixes" if what == "fix" else what].sum())
            cells.append(f"{hit / n:.2f} ({hit}/{n}), {hit / max(out, 1):.2f} ({hit}/{out})")
        lines.append(f"| {s} | {n // len(g)} x {len(g)} seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pipeline_table(rows: pd.DataFrame) -> str:
    """Per set, the audit pipeline's gains (mean ± std over seeds): on the clean eval truth, in CV overall
    and in CV like for like; the like-for-like CV gain should agree with the eval gain, the overall one
    need not (it grades the corrections with the model's own suggestions)."""
    if "eval_gain" not in rows.columns:
        return ""
    lines = ["| set | eval gain | CV gain, like for like | CV gain, overall |", "|---|---|---|---|"]
    for s, g in rows.dropna(subset=["eval_gain"]).groupby("set", sort=False):
        cells = [f"{g[c].mean():+.3f} ± {g[c].std(ddof=0):.3f}"
                 for c in ("eval_gain", "cv_gain_like_for_like", "cv_gain")]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(cfg: Config, overrides: list[str]) -> int:
    b = cfg.bench
    work = Path(b.out) / "contest"
    people = 30 if b.tiny else 120
    base = ["log.wandb.mode=disabled", "log.figures=false", "split.folds=3", *PLAIN,
            *(["model.name=test_resnet", "data.img_size=32", "train.epochs=2", "train.batch_size=16"] if b.tiny else
              ["data.img_size=64", "train.epochs=5", "train.batch_size=32"]),
            *[o for o in overrides if not o.startswith("bench.")]]
    only = [s for s in (b.sets or []) if s in SWITCHES or s in PIPELINES] or None
    sets = [s for s in (b.sets or []) if s in SETS] or SETS
    rows = []
    for name in sets:
        root = Path(b.root) / f"{name}_{people}_v{VERSION}"  # sets drawn by another generator are not reused
        if not (root / "eval" / "truth.csv").is_file():
            write_contest(root, name, people=people, seed=0)
        for seed in range(b.seeds):
            t0 = time.perf_counter()
            rows += one_set(name, root, work / name, seed, base, only, AUDIT_CV)
            log.info("bench contest: %s seed %d in %.0f s", name, seed, time.perf_counter() - t0)
            files.write_csv(work / "contest_runs.csv", pd.DataFrame(rows))
    t = table(pd.DataFrame(rows))
    md = "\n".join(["| set | switch | eval macro-F1 (mean ± std over seeds) | gain over base (± std) | train s |",
                    "|---|---|---|---|---|"] +
                   [f"| {r.set} | {r.switch} | {r.eval_f1} | {r.gain} | {r.seconds} |" for r in t.itertuples()])
    for extra in (audit_table(pd.DataFrame(rows)), pipeline_table(pd.DataFrame(rows))):
        if extra:
            md += "\n\n" + extra
    files.write_text(work / "contest.md", md + "\n")
    print(md)
    return 0 if np.isfinite(pd.DataFrame(rows).eval_f1).all() else 1
