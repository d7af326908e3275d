"""Shared pytest fixtures.

Real data lives in ``../shared/data`` beside the checkout (never copied into the project); a
user's clone has none, so every test that needs it asks for the ``shared_data`` fixture and
is skipped with a message when it is absent.
"""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest

# VTK (slicer-core, and Slicer itself) switches the process to the "C" locale, whose default text
# encoding is ASCII: every text file must name its encoding. Run the whole suite that way from the
# start, so a missing encoding fails here whatever the order of the tests.
locale.setlocale(locale.LC_ALL, "C")

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("POCKETSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample images; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set POCKETSEG_SHARED_DATA)")
    return SHARED_DATA


def shared_file(shared_data: Path, relative: str) -> Path:
    """One file of the sample data; skips when that file is missing."""
    path = shared_data / relative
    if not path.exists():
        pytest.skip(f"sample file {relative} not found in {shared_data}")
    return path
