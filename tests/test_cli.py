"""`python -m bot ledger ...` and `python -m bot run`: output, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from ledger import Ledger
from tests.children import bot_env
from tests.stores import STORES, execute_now, sync_database

BALANCE_KEYS = {
    "account_id",
    "plan_type",
    "tokens_limit",
    "tokens_used",
    "tokens_held",
    "bonus_tokens",
    "available",
    "period_start",
    "period_end",
}
SECRET_NAMES = {
    "DISCORD_TOKEN",
    "OPENAI_API_KEY",
    "LEMONSQUEEZY_API_KEY",
    "LEMONSQUEEZY_WEBHOOK_SECRET",
}


@pytest.fixture(params=STORES)
def db(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A working folder without config.toml or .env, and a database the CLI points at:
    a SQLite file, then a PostgreSQL schema."""
    for name in list(os.environ):
        if name.upper().startswith("BOT_") or name.upper() in SECRET_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with sync_database(request.param, tmp_path / "ledger.db") as database:
        monkeypatch.setenv("BOT_STORAGE__DATABASE", database)
        asyncio.run(_create(database))
        yield database


async def _create(database: str) -> None:
    ledger = await Ledger.open(database)
    await ledger.close()


SQLITE_ONLY = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def spend(db: str, account: str, amount: int) -> None:
    async def go() -> None:
        async with await Ledger.open(db) as ledger:
            hold = await ledger.reserve(account, amount, "chat", user_id=9, model="gpt-5.4-mini")
            await ledger.commit(hold, amount)

    asyncio.run(go())


def test_balance_json_is_one_object_with_exactly_the_documented_keys(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(db, "guild:5", 1_234)
    code, out, err = run(capsys, "ledger", "balance", "guild:5", "--json")
    assert (code, err) == (0, "")
    assert len(out.strip().splitlines()) == 1
    data = json.loads(out)
    assert set(data) == BALANCE_KEYS
    assert data["account_id"] == "guild:5" and data["plan_type"] == "free"
    assert (data["tokens_limit"], data["tokens_used"], data["tokens_held"]) == (250_000, 1_234, 0)
    assert (data["bonus_tokens"], data["available"]) == (0, 250_000 - 1_234)
    assert data["period_start"] < data["period_end"]

    code, out, _ = run(capsys, "ledger", "balance", "user:77")  # never seen: said so
    assert (code, out) == (0, "user:77 has no activity yet\n")


def test_grant_revoke_plan_history_export_sweep_verify(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    account = "user:1"
    code, out, _ = run(capsys, "ledger", "grant", account, "5000", "--reason", "thanks")
    assert code == 0
    assert out.strip() == f"grant 5000 tokens on {account}: bonus 5000, available 255000"

    code, out, _ = run(capsys, "ledger", "revoke", account, "8000", "--reason", "oops")
    assert code == 0
    assert out.strip() == f"revoke 5000 tokens on {account}: bonus 0, available 250000"

    code, out, _ = run(capsys, "ledger", "plan", account, "pro", "--reason", "friend")
    assert code == 0 and out.strip() == f"{account} is on pro: available 10000000"
    code, out, _ = run(capsys, "ledger", "balance", account, "--json")
    assert json.loads(out)["plan_type"] == "pro"

    spend(db, account, 321)
    code, out, _ = run(capsys, "ledger", "history", account)
    header, *lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    assert header.split()[:3] == ["when", "operation", "status"] and " by " in header
    assert "chat" in lines[0] and "321" in lines[0]  # newest first
    assert "plan_change" in lines[1] and "free -> pro: friend" in lines[1]
    assert "revoke" in lines[2] and "grant" in lines[3]
    assert all("cli:" in line for line in lines[1:])  # the acting operator

    code, out, _ = run(capsys, "ledger", "history", account, "--json", "--limit", "3")
    entries = json.loads(out)
    assert code == 0 and [e["operation_type"] for e in entries] == ["chat", "plan_change", "revoke"]
    assert entries[0]["tokens_used"] == 321 and entries[2]["bonus_delta"] == -5_000

    spend(db, "guild:2", 10)
    code, out, _ = run(capsys, "ledger", "export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 5
    assert [r["account_id"] for r in rows] == [account] * 4 + ["guild:2"]
    assert rows[0]["operation_type"] == "grant" and rows[0]["bonus_delta"] == "5000"

    code, out, _ = run(capsys, "ledger", "sweep")
    assert code == 0
    assert out.strip() == "released 0 holds of stopped processes and 0 expired holds (0 tokens)"

    code, out, _ = run(capsys, "ledger", "verify")
    assert (code, out) == (0, "ledger ok\n")


def test_verify_exits_1_with_one_line_per_violation(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spend(db, "user:1", 100)
    spend(db, "user:2", 100)
    spend(db, "user:3", 100)
    execute_now(
        db,
        "UPDATE usage_limits SET tokens_used = tokens_used + 1"
        " WHERE account_id IN ('user:1', 'user:3')",
    )

    code, out, _ = run(capsys, "ledger", "verify")

    lines = out.strip().splitlines()
    assert code == 1
    assert len(lines) == 2
    assert lines[0].startswith("user:1: tokens_used 101") and "100" in lines[0]
    assert lines[1].startswith("user:3: tokens_used 101")


@pytest.mark.parametrize(
    "argv",
    [
        ["ledger", "balance", "bogus:1"],
        ["ledger", "balance", "user:abc"],
        ["ledger", "grant", "server:1", "10", "--reason", "x"],
        ["ledger", "grant", "user:1", "-5", "--reason", "x"],
        ["ledger", "grant", "user:1", "0", "--reason", "x"],
        ["ledger", "grant", "user:1", "1.5", "--reason", "x"],
        ["ledger", "revoke", "user:1", "ten", "--reason", "x"],
        ["ledger", "grant", "user:1", "100000001", "--reason", "too much"],
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    code, out, _ = run(capsys, "ledger", "export")  # and nothing was written
    assert len(out.strip().splitlines()) == 1


# Refused before any database is opened: the store makes no difference.
@SQLITE_ONLY
def test_missing_database_gives_one_line_and_exit_2(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "bot.db"
    monkeypatch.setenv("BOT_STORAGE__DATABASE", str(missing))
    for argv in (["ledger", "balance", "user:1"], ["ledger", "verify"], ["ledger", "sweep"]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, "")
        assert len(err.strip().splitlines()) == 1
        assert str(missing) in err and "BOT_STORAGE__DATABASE" in err
    assert not missing.parent.exists()  # the CLI did not create it


def test_an_unreachable_postgresql_gives_one_line_without_its_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    # Port 1: nothing listens there, so the connection is refused at once.
    monkeypatch.setenv("BOT_STORAGE__DATABASE", "postgresql://bot:hunter2@127.0.0.1:1/bot")
    for argv in (["ledger", "balance", "user:1"], ["check"]):
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "postgresql://bot:***@127.0.0.1:1/bot" in err
        assert "hunter2" not in out + err


@SQLITE_ONLY
def test_a_bad_configuration_gives_one_line_and_exit_2(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_LIMITS__MAX_GRANT", "none")
    code, _, err = run(capsys, "ledger", "balance", "user:1")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "limits.max_grant" in err


def test_the_max_grant_setting_bounds_grants(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BOT_LIMITS__MAX_GRANT", "100")
    code, _, err = run(capsys, "ledger", "grant", "user:1", "101", "--reason", "x")
    assert code == 2 and "limits.max_grant" in err
    code, out, _ = run(capsys, "ledger", "grant", "user:1", "100", "--reason", "x")
    assert code == 0 and "bonus 100" in out


def _bot(tmp_path: Path, *argv: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=bot_env(**extra_env),
        timeout=60,
    )


def test_run_without_a_discord_token_says_how_to_get_one(tmp_path: Path) -> None:
    done = _bot(tmp_path, "run")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "DISCORD_TOKEN" in lines[0]
    assert "https://discord.com/developers/applications" in lines[0]
    assert ".env" in lines[0]
    assert not (tmp_path / "data").exists()


def test_the_real_entry_point_prints_one_line_errors(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    done = _bot(tmp_path, "ledger", "balance", "user:1", BOT_STORAGE__DATABASE=str(db))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1

    async def create() -> None:
        async with await Ledger.open(db):
            pass

    asyncio.run(create())
    done = _bot(
        tmp_path, "ledger", "grant", "user:x", "5", "--reason", "r", BOT_STORAGE__DATABASE=str(db)
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    done = _bot(tmp_path, "ledger", "balance", "user:1", "--json", BOT_STORAGE__DATABASE=str(db))
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == BALANCE_KEYS
