"""`baseline <command> [--config FILE] [key=value ...]`, also as `python -m baseline`."""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config
from .errors import LOST_PEER, OUT_OF_MEMORY, USER_ERROR, USER_ERRORS, LostPeer, OutOfMemory
from .runfolder import RunFolder

# Nothing above imports torch, timm or pandas: --help, a typo's error and `baseline config` answer at once;
# each command imports what it needs when it runs.
COMMANDS = {
    "train": "train one model (one fold) and write runs/<name>/",
    "cv": "train every fold of the split file as one experiment: runs/<name>/fold<k>/, cv.json, oof.csv",
    "pseudo": "pseudo-labels: the test images an ensemble (submit.ensemble) or runs predict with probability >= "
              "pseudo.threshold, as pseudo/<name>.csv for data.pseudo=",
    "refit": "after `baseline cv`: train on every fold together for the epochs the folds chose: "
             "<experiment>/refit/, an ensemble member and a submission source like any run",
    "submit": "predict the test images with checkpoints/runs and write submissions/<name>.csv",
    "data": "data tools: synth (built-in dataset) | split (write the shared split file) | check (report) | "
            "audit EXPERIMENT (labels the out-of-fold predictions contradict: label_issues.csv, --corrections FILE) | "
            "review EXPERIMENT (a page to accept or reject the audit's flags: label_review.html)",
    "sweep": "run a W&B-format sweep file (grid | random | bayes | PATH) with Optuna, one run per trial; "
             "several workers may share one study (sweep.storage)",
    "sweep-dashboard": "serve a sweep's study live with optuna-dashboard on localhost (--port; Ctrl-C stops it)",
    "sweep-report": "a sweep's trials, parameter importances and pictures (optimization history, parallel coordinates)",
    "runs": "the local leaderboard: every run under run.dir, best macro-F1 first",
    "ensemble": "fit ensemble weights (and per-class offsets) on out-of-fold predictions: ensembles/<name>.yaml",
    "compare": "is experiment B really better than A? Their OOF macro-F1 difference with a confidence interval "
               "from a paired bootstrap over people, per fold, per field and per class, a verdict and a picture",
    "lb": "record the public leaderboard score of a submission in the ledger: baseline lb FILE SCORE "
          "(without SCORE: scored against <data.root>/eval/truth.csv, which the built-in data has)",
    "submissions": "the submission ledger: CV next to LB, their rank correlation, submissions/cv_vs_lb.png",
    "lr-find": "an LR range test on this config (data, model, first freeze phase): <run.dir>/lr-find/<name>/ "
               "lr_find.png and a suggested optim.lr; no run folder or checkpoint is touched",
    "bench": "speed (default): images/s four ways (limit | kit step | kit | naive); loader: the loader alone at "
             "224 px per worker count; recipe: kit defaults vs the strongest simple loop on a suite of data sets; "
             "contest: each contest technique against a plain run; gpu: the GPU check",
    "config": "print the config a run would use: every key with its value, default and meaning, by section, "
              "each auto with what it resolves to here (all keys: docs/config.md)",
    "gpus": "one line per visible GPU: free and total memory, this process's allocated / reserved / peak, what "
            "other processes hold (NVML, matched by UUID)",
}


def _setup_logging() -> None:
    # Before dist.setup() there is no Env yet: torchrun's RANK says which process prints.
    main = int(os.environ.get("RANK", "0")) == 0
    level = logging.INFO if main else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stdout)
    logging.getLogger("baseline").setLevel(level)  # also when something else configured the root logger
    for noisy in ("timm", "PIL", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baseline", description="Image-classification competition kit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, help_ in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == "data":
            sp.add_argument("action", choices=["synth", "split", "check", "audit", "review"])
            sp.add_argument("source", nargs="*", help="audit: the experiment (or run) folder whose oof.csv to audit; "
                            "several: their out-of-fold probabilities averaged (a vote across runs)")
            sp.add_argument("--corrections", metavar="FILE",
                            help="audit: also write the gender/age suggestions as a data.corrections file to review")
        if name == "bench":
            sp.add_argument("what", nargs="?", default="speed", choices=["speed", "loader", "recipe", "gpu", "contest"])
        if name == "sweep":
            sp.add_argument("sweep", help="grid | random | bayes | path to a sweep YAML in W&B's format")
        if name in ("sweep-report", "sweep-dashboard"):
            sp.add_argument("name", help="the sweep's name (its folder under <run.dir>/sweeps/)")
        if name == "sweep-dashboard":
            sp.add_argument("--port", type=int, default=8080)
        if name == "refit":
            sp.add_argument("experiment", help="the experiment folder `baseline cv` wrote (runs/<name>)")
        if name == "ensemble":
            sp.add_argument("members", nargs="+", metavar="MEMBER", help="run folders or experiment folders")
            sp.add_argument("--name", default="", help="ensembles/<name>.yaml (default: ens-<time>)")
            sp.add_argument("--offsets", action="store_true", help="also tune per-class logit offsets")
        if name == "lb":
            sp.add_argument("file", help="a submission in the ledger: its path, file name or sha256")
            sp.add_argument("score", nargs="?", help="the public leaderboard score read off the site; "
                            "omitted: macro-F1 against <data.root>/eval/truth.csv")
        if name == "submissions":
            sp.add_argument("--final", type=int, metavar="N", help="suggest the N submissions to select on the site "
                            "at the end: the best by CV, then insurance (good CV, the most different answers)")
        if name == "compare":
            sp.add_argument("a", help="experiment (or run) folder A, or its name under a run root")
            sp.add_argument("b", help="experiment (or run) folder B: the one asked about")
        if name in ("runs", "ensemble", "compare"):
            sp.add_argument("--dir", action="append", metavar="DIR",
                            help="a run root (repeat for several: yours, a teammate's copy, a shared disk); "
                                 "default runs.dirs, else run.dir")
        if name == "runs":
            sp.add_argument("--compare", nargs="+", metavar="RUN",
                            help="runs (names under run.dir, or folders) whose per-class F1 to draw in one picture")
        if name in ("train", "sweep", "cv", "refit"):
            sp.add_argument("--nproc", type=int, default=1, help="processes on this machine (torchrun) when > 1")
        sp.add_argument("--config", "-c", action="append", metavar="FILE",
                        help="YAML file of config keys, nested or dotted (train.epochs: 3); repeat to stack several "
                             "(defaults < files, in order < key=value overrides)")
        sp.epilog = ("Any further key=value arguments override config keys, e.g. train.epochs=3 model.name=resnet18. "
                     "Every key, its default and meaning: `baseline config` or docs/config.md.")
    return p


@contextlib.contextmanager
def importing():
    """Import a command's modules with the cyclic GC off, then freeze what they made (gc.freeze). torch and
    timm create about a million objects while they import: the GC would walk them again and again (0.7 s
    here) and once more at exit (1 s). Measured: `baseline config` 5.0 s -> 3.3 s."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def config_command(cfg: Config) -> int:
    from .config import describe

    with importing():
        from .defaults import preview
    resolved, note = preview(cfg)
    print(describe.text(cfg, resolved), end="")
    if note:
        print(note)
    return 0


def data_command(action: str, cfg: Config, args=None) -> int:
    from .data import check, layouts, split, synth

    if action == "audit":
        return audit_command(cfg, getattr(args, "source", None), getattr(args, "corrections", None))
    if action == "review":
        return review_command(cfg, getattr(args, "source", None))
    if action == "synth":
        root = synth.write_synth(cfg.data.root, people=cfg.data.synth_people, seed=cfg.seed, scale=cfg.data.synth_scale)
        print(f"wrote the built-in dataset to {root}")
        return 0
    if action == "split":
        table = layouts.read_table(cfg)
        path = split.write_split(cfg, table)
        fold = split.read_folds(cfg, table, path)
        split.check_groups(table, fold, path)
        print(f"wrote {path} ({cfg.split.folds} folds, {table.df['group'].nunique()} groups, "
              f"sha {split.file_hash(path)})")
        return 0
    errors = check.check(cfg)
    print(f"{errors} error(s)")
    return 1 if errors else 0


def audit_command(cfg: Config, source: list[str] | None, corrections: str | None) -> int:
    from . import audit

    if not source:
        raise ConfigError("baseline data audit EXPERIMENT: name the experiment folder `baseline cv` wrote "
                          "(e.g. runs/<name>), whose oof.csv holds every training image's out-of-fold prediction")
    found, out = audit.run(cfg, source, corrections)
    if len(source) > 1:
        print(f"voted: the out-of-fold probabilities of {len(source)} experiments, averaged per image")
    shown = found.drop(columns=["path"]).head(20)
    print(shown.to_string(index=False) if len(found) else "no label issues found")
    fields = found["field"].value_counts().to_dict() if "field" in found.columns else {"images": len(found)}
    print(f"{len(found)} suspected label issue(s) {fields}: {out} (and label_issues.png)")
    if corrections:
        print(f"wrote {corrections}: review it, then train with data.corrections={corrections}")
    return 0


def review_command(cfg: Config, source: list[str] | None) -> int:
    from . import review

    if not source:
        raise ConfigError("baseline data review EXPERIMENT: name the experiment folder `baseline data audit` wrote "
                          "label_issues.csv into")
    page, n = review.write(cfg, source[0])
    print(f"wrote {page}: {n} flag(s) to decide; open it in a browser, then its download button gives a "
          "data.corrections file")
    return 0


def runs_command(cfg: Config, compare: list[str] | None, dirs: list[str] | None = None) -> int:
    from .leaderboard import compare_runs, label_notes, leaderboard

    if compare:
        table, png = compare_runs([_run_folder(cfg, r) for r in compare])
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        print(f"picture: {png}")
        return 0
    from .data.split import file_hash, split_path

    roots = run_roots(cfg, dirs)
    team = split_path(cfg)
    board = leaderboard(roots, file_hash(team) if team.is_file() else None)
    print(board.to_string(index=False) if len(board) else f"no runs under {', '.join(map(str, roots))}")
    if board["data"].nunique() > 1:
        print(f"note: {board['data'].nunique()} different data sets; F1 is ranked within each, not across")
    for line in label_notes(board, roots):
        print(line)
    other = board[board.split.str.endswith("*")]
    if len(other):
        print(f"note: {len(other)} run(s) marked * were made on another split file than the team's ({team}); "
              "their scores do not compare and `baseline ensemble` refuses them")
    return 0


def run_roots(cfg: Config, dirs: list[str] | None) -> list[Path]:
    """--dir (repeatable), else runs.dirs, else run.dir."""
    return [Path(d) for d in (dirs or cfg.runs.dirs or [cfg.run.dir])]


def ensemble_command(cfg: Config, args) -> int:
    import time

    from .submit import ensemble

    roots = run_roots(cfg, args.dir)
    spec = ensemble.fit([ensemble.find_member(m, roots) for m in args.members], offsets=args.offsets)
    path = ensemble.write(spec, args.name or f"ens-{time.strftime('%Y%m%d-%H%M%S')}")
    print(ensemble.report(spec))
    print(f"wrote {path}; submit with: baseline submit submit.ensemble={path}")
    return 0


def compare_command(cfg: Config, args) -> int:
    import json

    from .submit import compare, ensemble

    roots = run_roots(cfg, args.dir)
    a, b = (Path(ensemble.find_member(m, roots)) for m in (args.a, args.b))
    first = ensemble.load_member(a).runs[0]
    names = json.loads(RunFolder(first).classes.read_text()) if RunFolder(first).classes.is_file() else None
    result = compare.compare(a, b, names)
    print(compare.report(result))
    png = compare.picture(result, Path(cfg.run.dir) / "compare" / f"{a.name}_vs_{b.name}.png")
    print(f"picture: {png}")
    return 0


def ledger_command(cfg: Config, args) -> int:
    from .submit import ledger

    book = ledger.path(cfg)
    if args.command == "lb":
        row = ledger.record_lb(book, args.file, lb_score(cfg, book, args))
        print(f"{row['file']}: LB {row['lb']} (CV {row['cv_f1'] or row['member_val_f1'] or '?'})")
        return 0
    if args.final:
        from .submit import picks

        print(picks.report(book, args.final))
        return 0
    png = book.parent / "cv_vs_lb.png"
    table, rho = ledger.cv_vs_lb(book, png)
    print(table.to_string(index=False) if len(table) else f"no submissions in {book} yet")
    scored = table["lb"].notna().sum()
    print(f"CV vs LB: Spearman {rho:.2f} over {scored} scored submissions; picture {png}" if rho is not None
          else f"{scored} submission(s) with an LB score; the rank correlation needs 3")
    return 0


def lb_score(cfg: Config, book: Path, args) -> float:
    """The SCORE given, else the submission's macro-F1 against the data's truth file."""
    from .submit import ledger

    if args.score is not None:
        try:
            return float(args.score)
        except ValueError:
            raise ConfigError(f"baseline lb: SCORE '{args.score}' is not a number (e.g. 0.7713)") from None
    truth = Path(cfg.data.root) / "eval" / "truth.csv"
    if not truth.is_file():
        raise ConfigError(f"baseline lb {args.file}: no SCORE given and no {truth} to score against (only the "
                          "built-in data has one); give the score the competition site shows: "
                          f"baseline lb {args.file} 0.7713")
    score = ledger.truth_score(ledger.submission_file(book, args.file), truth)
    print(f"macro-F1 against {truth}: {score:.5f}")
    return score


def _run_folder(cfg: Config, name: str) -> Path:
    for p in (Path(name), Path(cfg.run.dir) / name):
        if RunFolder(p).oof.is_file():
            return p
    raise ConfigError(f"runs --compare: no run folder with an oof.csv at {name} or {Path(cfg.run.dir) / name} "
                      "(a run writes oof.csv after its first validation)")


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> int:
    """`baseline train --nproc N ...` is `torchrun --standalone --nproc_per_node=N -m baseline train ...`,
    with torchrun's launcher in this process (dist.launch: one line when a process dies)."""
    rest = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")]
    rest = [a for a in rest if not a.startswith("--nproc=")]
    from .dist import launch

    return launch(nproc, rest)


def parse(argv: list[str] | None):
    p = parser()
    args, rest = p.parse_known_args(argv)
    if getattr(args, "score", None) and "=" in args.score:  # `lb FILE key=value`: no SCORE, an override
        rest, args.score = [args.score, *rest], None
    for many in ("compare", "members", "source"):  # nargs="+" also swallows key=value overrides after the names
        if getattr(args, many, None):
            rest += [a for a in getattr(args, many) if "=" in a]
            setattr(args, many, [a for a in getattr(args, many) if "=" not in a])
    bad = [a for a in rest if "=" not in a or a.startswith("-")]
    if bad:
        p.error(f"unrecognized arguments {bad}: config overrides are key=value")
    args.overrides = rest
    return args


def dispatch(args, cfg: Config) -> int:
    """Run the command; its exit code."""
    if args.command == "sweep":
        return sweep_command(args)
    if args.command == "gpus":
        from . import gpus

        return gpus.main()
    if args.command == "config":
        return config_command(cfg)
    if args.command == "sweep-dashboard":
        from .sweeps.report import dashboard

        dashboard(cfg, args.name, args.port)
        return 0
    if args.command == "sweep-report":
        from .sweeps.report import report

        print(report(cfg, args.name))
        return 0
    if args.command == "runs":
        return runs_command(cfg, args.compare, args.dir)
    if args.command == "cv":
        from . import cv

        cv.run(cfg, args.config, args.overrides, args.nproc)
        return 0
    if args.command == "ensemble":
        return ensemble_command(cfg, args)
    if args.command == "compare":
        return compare_command(cfg, args)
    if args.command in ("pseudo", "refit", "lr-find"):
        return contest_command(args, cfg)
    if args.command in ("lb", "submissions"):
        return ledger_command(cfg, args)
    if args.command == "bench":
        return bench_command(args.what, cfg, args.overrides)
    if args.command == "data":
        return data_command(args.action, cfg, args)
    if args.command == "train":
        with importing():
            from .sweeps.trial import Reporter
            from .train import run

        run(cfg, Reporter if cfg.sweep.trial >= 0 else None)  # a sweep's trial: its pruner may stop the run
        return 0
    with importing():
        from .submit.submission import submit
    submit(cfg)
    return 0


def sweep_command(args) -> int:
    from .sweeps import sweep

    table = sweep.run(args.sweep, args.config, args.overrides, args.nproc)
    print(table.to_string(index=False))
    return 0 if (table.status == "complete").any() else 1


def contest_command(args, cfg: Config) -> int:
    """pseudo | refit | lr-find."""
    if args.command == "pseudo":
        from .submit import pseudo

        out, rows = pseudo.write(cfg)
        print(f"wrote {out}: {len(rows)} pseudo-labelled test images; train with data.pseudo={out}")
        return 0
    if args.command == "refit":
        from . import cv

        print(f"refit: {cv.refit(Path(args.experiment), args.overrides, args.nproc)}")
        return 0
    from . import lr_find

    r = lr_find.run(cfg)
    print(f"suggested optim.lr={r['suggested']:.2e} (lowest loss at {r['min_lr']:.2e}, steepest descent at "
          f"{r['steepest']:.2e}); picture {r['dir']}/lr_find.png")
    return 0


def bench_command(what: str, cfg: Config, overrides: list[str]) -> int:
    if what == "gpu":
        from .bench import gpucheck

        return gpucheck.main(cfg, overrides)
    if what == "contest":
        from .bench import contest as contest_bench

        return contest_bench.main(cfg, overrides)
    if what == "recipe":
        from .bench import recipe

        return recipe.main(cfg, overrides)
    from .bench import speed as bench

    print(bench.loader_report(bench.loader_run(cfg)) if what == "loader" else bench.report(bench.run(cfg)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)  # a bad key is one line before any process starts
        if getattr(args, "nproc", 1) > 1 and args.command == "train" and "WORLD_SIZE" not in os.environ:
            return relaunch_under_torchrun(args.nproc, argv if argv is not None else sys.argv[1:])
        return dispatch(args, cfg)
    except USER_ERRORS as e:
        if int(os.environ.get("RANK", "0")) == 0:  # bad input is the same on every rank: one says it
            print(f"error: {e}", file=sys.stderr)
        return USER_ERROR
    except OutOfMemory as e:  # one rank's own: that rank says it
        print(f"error: {e}", file=sys.stderr)
        return OUT_OF_MEMORY
    except LostPeer as e:
        from .dist import report_lost_peer

        if int(os.environ.get("RANK", "0")) == 0 and not report_lost_peer(str(e)):  # else our launcher says it
            print(f"error: {e}", file=sys.stderr)
        return LOST_PEER
