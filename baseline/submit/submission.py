"""`baseline submit`: the members' test probabilities (predict.py), person voting where asked (people.py),
the checked submission CSV and its ledger row."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from .. import cpus, dist, files
from ..config import Config
from ..data.layouts import check_test_labels, class_names, read_test_table
from ..runfolder import RunFolder
from . import ensemble, ledger, people, predict

log = logging.getLogger("baseline")


def submit(cfg: Config) -> Path:
    env = dist.setup(cfg.train.device)
    try:
        spec = ensemble.read(cfg.submit.ensemble) if cfg.submit.ensemble else None
        predict.check_offsets_match_tta(cfg, spec)
        paths, weights = ensemble.checkpoints_and_weights(spec) if spec else (predict.resolve_checkpoints(cfg), None)
        cfg = predict.with_test_data(cfg, paths[0], env)
        test = read_test_table(cfg)
        line = cpus.set_threads(cfg.train.threads, cpus.watch(env.local_world), predict.predict_workers(cfg, env))
        if env.is_main:
            log.info("%s", line)
        classes = predict.check_classes(paths, class_names(cfg), f"the {cfg.data.format} data under '{cfg.data.root}'")
        check_test_labels(test, classes, cfg.data.test_csv or "test set")
        name = (Path(cfg.submit.ensemble).stem if spec else RunFolder.of_checkpoint(paths[0]).name if len(paths) == 1
                else f"ensemble{len(paths)}-{datetime.now():%Y%m%d-%H%M%S}")
        out = Path(cfg.submit.out or f"submissions/{name}.csv")
        predict.writable_target(out)
        probs, classes = (predict.ensemble_probs(cfg, test, spec, env) if spec else
                          predict.predict_probs(cfg, test, paths, env))
        voted = people.wanted(cfg, paths, env)
        if voted:
            groups = people.test_groups(cfg, test, paths, env)
            probs = people.vote(probs, groups, cfg.submit.person_fields)
            log.info("person vote: %d test images in %d groups agree on %s", len(probs), groups.max() + 1,
                     " and ".join(cfg.submit.person_fields))
        sub = predict.submission_frame(test, probs.argmax(1), classes, cfg.data.format)
        predict.check_submission(sub, test, len(classes), cfg.data.format)
        if env.is_main:
            files.write_csv(out, sub)
            if voted:  # which photos were taken for one person: to look at, and for a set with known people
                files.write_csv(people.groups_file(out), test.template[[test.id_col]].assign(person=groups))
            log.info("wrote %s (%d rows, %d checkpoint(s)%s%s)", out, len(sub), len(paths),
                     ", TTA" if cfg.submit.tta else "", ", person vote" if voted else "")
            book = ledger.path(cfg)
            row = ledger.append(book, out, paths, cfg.submit.tta, weights, spec.get("oof_f1") if spec else None)
            log.info("ledger %s: members %s, CV %s", book, row["members"], row["cv_f1"] or row["member_val_f1"] or "?")
        return out
    finally:
        dist.teardown()
