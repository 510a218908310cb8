"""`ledger verify [--full]`, `ledger export` and `check` on the command line: progress
only on a terminal, and `check` never walks the whole log."""

from __future__ import annotations

import io

import pytest

from bot.cli import Progress
from tests.stores import execute_now, query_now
from tests.test_check_online import TOKEN
from tests.test_cli import db, run, spend

__all__ = ["db"]  # the fixture, shared with tests/test_cli.py


def _tamper(db: str, statement: str) -> None:
    execute_now(db, statement)


def test_verify_and_full_verify_and_no_progress_off_a_terminal(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(db, "user:1", 100)
    assert run(capsys, "ledger", "verify") == (0, "ledger ok\n", "")
    spend(db, "user:1", 50)
    assert run(capsys, "ledger", "verify", "--full") == (0, "ledger ok\n", "")
    code, out, err = run(capsys, "ledger", "export")
    assert code == 0 and err == "" and len(out.splitlines()) == 3

    _tamper(db, "UPDATE usage_limits SET tokens_used = 1 WHERE account_id = 'user:1'")
    for argv in (["ledger", "verify"], ["ledger", "verify", "--full"]):
        code, out, err = run(capsys, *argv)
        assert (code, err) == (1, "") and out.startswith("user:1: tokens_used 1 ")


def test_check_verifies_only_what_changed_since_the_last_clean_run(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What `run` needs is present, so check's exit code speaks of the ledger alone.
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    spend(db, "user:1", 100)
    code, out, _ = run(capsys, "check")
    assert code == 0 and "never verified" in out
    assert query_now(db, "SELECT COUNT(*) FROM verify_state") == [(0,)]

    run(capsys, "ledger", "verify")
    spend(db, "user:2", 10)
    code, out, _ = run(capsys, "check")
    assert code == 0 and f"database: {db} (ok)" in out

    _tamper(db, "UPDATE usage_limits SET tokens_held = 3 WHERE account_id = 'user:2'")
    code, out, _ = run(capsys, "check")
    assert code == 1 and "VIOLATIONS" in out and "user:2: tokens_held 3" in out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_line_is_drawn_on_a_terminal_and_cleared_at_the_end() -> None:
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with Progress("export", "rows", stream) as progress:
            progress.ids(5, 10)
            progress.ids(10, 10)
    assert pipe.getvalue() == ""
    shown = terminal.getvalue()
    assert "export: rows 50% (5/10)" in shown and "100% (10/10)" in shown
    assert shown.endswith("\r\x1b[K")


def test_compact_archives_and_reports(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    spend(db, "user:1", 100)
    code, out, err = run(capsys, "ledger", "compact")
    assert (code, err) == (0, "")
    assert out.startswith("archived 0 resolved holds; gave back ") and out.endswith(
        " MiB; WAL emptied\n"
    )
    assert run(capsys, "ledger", "verify", "--full")[0] == 0
