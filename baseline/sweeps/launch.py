"""What both sweep executors (Optuna's workers, Ray Tune's trials) share about a trial's run: its
`key=value` overrides, the one error a failed run raises, whether the run ended on its own, and the line
of its log that says why it failed."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..runfolder import RunFolder


class TrialFailed(RuntimeError):
    """The trial's run exited with an error (recorded on the trial; the sweep goes on); its .log in the
    sweep folder has the whole output."""


def override(key: str, value) -> str:
    """`key=value` as our CLI (and W&B's ${args_no_hyphens}) writes it."""
    if isinstance(value, (list, dict)):
        return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    return f"{key}={value}"


def finished_run(run_dir: Path) -> bool:
    """The run ended on its own (all its epochs, or its early stop): not stopped by a scheduler, not failed."""
    return RunFolder(run_dir).summary().get("status") == "finished"


def last_error(out: Path) -> str:
    lines = [ln for ln in out.read_text().splitlines() if ln.strip()] if out.is_file() else []
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]
