"""The docs a newcomer reads stay true: the README is short and starts with the real data, names every
command and make target, its links and the docs' links resolve, the generated pages are current, the
example configs load, and the CLI answers at once."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from baseline import reference
from baseline.cli import COMMANDS, parser
from baseline.config import describe, load_config, walk

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_short_and_day_one_on_the_real_data_comes_first():
    lines = README.splitlines()
    assert len(lines) <= 260, len(lines)
    first = "\n".join(lines[:40])
    assert "data.root" in first and "train/train.csv" in first and "eval/info.csv" in first
    for step in ("make check", "make split", "make train", "make submit"):
        assert step in first, step


def test_the_readme_names_every_command_and_make_target():
    commands = set(parser()._subparsers._group_actions[0].choices)
    assert commands == set(COMMANDS)
    missing = [c for c in commands if f"`baseline {c}`" not in README]
    targets = re.findall(r"^([a-z][a-z_-]*):(?!=)", (ROOT / "Makefile").read_text(), re.M)
    missing += [t for t in targets if f"make {t}" not in README]
    assert not missing, missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    text = page.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(target)
    assert not broken, broken


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        out.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return out


def test_the_generated_pages_are_current():
    assert reference.stale() == [], "run `make docs`"


def test_the_config_page_lists_every_key_with_a_meaning():
    page = (ROOT / "docs" / "config.md").read_text()
    keys = [k for k, _, _ in walk()]
    assert all(f"| `{k}` |" in page for k in keys)
    assert [k.key for k in describe.keys() if not k.short] == []  # every key says what it is


def test_the_commands_table_follows_the_makefile(tmp_path):
    make = tmp_path / "Makefile"
    make.write_text("x: a\n\t$(BIN)/baseline bench loader $(ARGS)\n\n"
                    "both:\n\t$(BIN)/baseline train\n\t$(BIN)/baseline submit\n")
    assert reference.make_targets(make) == {"x": "bench loader"}  # a two-command recipe names neither


@pytest.mark.parametrize("name", ["team", "contest-starter", "gpu-strong", "cpu-smoke"])
def test_example_configs_load_on_top_of_the_team_file(name):
    cfg = load_config([ROOT / "configs" / "team.yaml", ROOT / "configs" / f"{name}.yaml"])
    assert cfg.data.root == "/data/mask" and cfg.split.folds == 5 - 2 * (name == "cpu-smoke")


def run_timed(*args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "baseline", *args], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.perf_counter() - t0, r.stdout


def test_help_answers_at_once_and_says_where_the_keys_are():
    seconds, out = run_timed("--help")
    assert seconds < 2.0 and all(c in out for c in COMMANDS)
    _, out = run_timed("train", "--help")
    assert "baseline config" in out and "docs/config.md" in out


@pytest.mark.slow
def test_config_prints_every_key_and_what_auto_is_here(tmp_path):
    seconds, out = run_timed("config", f"data.root={tmp_path / 'none'}", "train.epochs=3")
    assert seconds < 5.0, seconds
    shown = re.findall(r"^  ([\w.]+): ", out, re.M)
    assert shown == [k for k, _, _ in walk()]
    assert re.search(r"^  train.epochs: 3 \(default 10\)", out, re.M)
    assert re.search(r"^  train.device: auto -> cpu here", out, re.M) and "data's defaults need the data" in out


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_help_prints(command, capsys):
    with pytest.raises(SystemExit) as done:
        parser().parse_args([command, "--help"] if command else ["--help"])
    assert done.value.code == 0 and "usage: baseline" in capsys.readouterr().out
