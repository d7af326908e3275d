"""What users read (the installed code's messages and help, the README, the docs, the model
cards) speaks of PocketSeg, not of how it was developed: no tracker issues, no work sessions, no
paths of the development machine."""

from __future__ import annotations

import re

from conftest import REPO_ROOT

from pocketseg_core.cli import build_parser

DEVELOPMENT_CONTEXT = re.compile(
    r"\bthe issue\b|issue's|\.\./shared|shared/notes|\bsessions?\b|/work/", re.IGNORECASE
)

SHIPPED = [
    "pocketseg_core",
    "pocketseg_web",
    "PocketSeg",
    "PocketSegTrain",
    "docs",
    "Resources/Models",
    "README.md",
]


def test_shipped_files_carry_no_development_context():
    found = []
    for entry in SHIPPED:
        root = REPO_ROOT / entry
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.suffix not in {".py", ".md", ".json", ".txt"} or "__pycache__" in path.parts:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if DEVELOPMENT_CONTEXT.search(line):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert found == []


def test_command_help_carries_no_development_context():
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:  # every sub-command's --help
        texts += [sub.format_help() for sub in action.choices.values()]
    assert len(texts) > 5
    assert [t for t in texts if DEVELOPMENT_CONTEXT.search(t)] == []
