"""The layers of DESIGN.md hold: the import-linter contracts in pyproject.toml are kept.
Run here too (not only in CI) so that a change that points an arrow up fails at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    pytest.importorskip("importlinter")  # in the test extra; CI also runs lint-imports
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
