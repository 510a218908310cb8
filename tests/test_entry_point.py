"""What an operator sees from `python -m bot ...` when something is wrong: one line and
an exit code, never a traceback (issue 16's "seen" list, issue 10's findings 11 and 12).

Each case runs the real entry point in a child process."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import discord.http
import pytest

from bot import cli
from ledger import Ledger
from tests.children import bot_env

# A token of the right shape: its first part is an application id in base64.
TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyz0123456789AB"


def bot(cwd: Path, *argv: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=bot_env(**env),
        input=stdin,
        timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a run that exited `code`."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (code, 1), done.stderr
    return lines[0]


def make_db(path: Path) -> Path:
    async def create() -> None:
        async with await Ledger.open(path) as ledger:
            await ledger.grant("user:1", 5, "test", "setup")

    asyncio.run(create())
    return path


# ---- configuration and arguments ----------------------------------------------------


def test_a_list_in_the_environment_written_without_json_is_one_line(tmp_path: Path) -> None:
    done = bot(tmp_path, "check", BOT_ADMINS__USER_IDS="1,2")
    line = one_line(done, 2)
    assert "BOT_ADMINS__USER_IDS" in line and "[1, 2]" in line


def test_dotenv_and_storage_are_read_beside_the_config_file(tmp_path: Path) -> None:
    home = tmp_path / "srv"
    home.mkdir()
    (home / "config.toml").write_text('[storage]\ndatabase = "state/bot.db"\n')
    (home / ".env").write_text(f"DISCORD_TOKEN={TOKEN}\nOPENAI_API_KEY=sk-test\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = bot(elsewhere, "--config", str(home / "config.toml"), "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"configuration: {home / 'config.toml'} (read)" in done.stdout
    assert "DISCORD_TOKEN: set" in done.stdout and "OPENAI_API_KEY: set" in done.stdout
    assert f"database: {home / 'state' / 'bot.db'} (does not exist yet;" in done.stdout
    assert not (home / "state").exists() and not (elsewhere / "state").exists()


# ---- check --------------------------------------------------------------------------


def test_check_exits_1_naming_what_run_needs(tmp_path: Path) -> None:
    done = bot(tmp_path, "check", BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "configuration: no file; defaults" in done.stdout  # no config.toml here
    missing = [line for line in done.stdout.splitlines() if line.startswith("missing: ")]
    assert len(missing) == 2, done.stdout
    assert "DISCORD_TOKEN is not set" in missing[0] and "OPENAI_API_KEY" in missing[1]
    assert "set DISCORD_TOKEN to fill in" not in done.stdout


def test_check_says_a_malformed_token_is_malformed(tmp_path: Path) -> None:
    done = bot(
        tmp_path,
        "check",
        BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"),
        DISCORD_TOKEN="not a token",
        OPENAI_API_KEY="sk-test",
    )
    assert done.returncode == 1
    assert "missing: DISCORD_TOKEN is not a bot token" in done.stdout, done.stdout


def test_check_wants_a_checkout_and_a_secret_once_billing_is_configured(tmp_path: Path) -> None:
    env = {
        "BOT_STORAGE__DATABASE": str(tmp_path / "bot.db"),
        "DISCORD_TOKEN": TOKEN,
        "OPENAI_API_KEY": "sk-test",
    }
    assert bot(tmp_path, "check", **env).returncode == 0
    done = bot(tmp_path, "check", BOT_LEMONSQUEEZY__STORE_ID="123", **env)
    assert done.returncode == 1
    assert "missing: no checkout" in done.stdout
    assert "missing: LEMONSQUEEZY_WEBHOOK_SECRET is not set" in done.stdout
    done = bot(
        tmp_path,
        "check",
        BOT_LEMONSQUEEZY__CHECKOUT_URL="https://shop.example/buy/1",
        LEMONSQUEEZY_WEBHOOK_SECRET="s",
        **env,
    )
    assert done.returncode == 0, done.stdout


# ---- the ledger CLI -----------------------------------------------------------------


def test_export_into_a_pipe_that_closes_early_is_quiet(tmp_path: Path) -> None:
    db = make_db(tmp_path / "bot.db")
    with closing(sqlite3.connect(db)) as conn:  # enough rows to outgrow a pipe buffer
        names = [row[1] for row in conn.execute("PRAGMA table_info(token_usage)")]
        values = ", ".join("NULL" if n in {"id", "hold_id"} else n for n in names)
        for _ in range(11):
            conn.execute(f"INSERT INTO token_usage SELECT {values} FROM token_usage")
        conn.commit()
    script = f"{sys.executable} -m bot ledger export | head -2; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=bot_env(BOT_STORAGE__DATABASE=str(db)),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == 2


def test_balance_of_an_unknown_account_says_so(tmp_path: Path) -> None:
    db = make_db(tmp_path / "bot.db")
    done = bot(tmp_path, "ledger", "balance", "guild:42", BOT_STORAGE__DATABASE=str(db))
    assert (done.returncode, done.stdout, done.stderr) == (0, "guild:42 has no activity yet\n", "")


# ---- database faults (issue 10, finding 11) -----------------------------------------

FRONTS = (("ledger", "verify"), ("check",), ("webhooks",), ("console", "--user", "1"))


@pytest.mark.parametrize("argv", FRONTS, ids=lambda a: a[0])
def test_a_file_that_is_not_a_database(tmp_path: Path, argv: tuple[str, ...]) -> None:
    db = tmp_path / "bot.db"
    db.write_bytes(b"these are the operator's notes, not a database\n" * 100)
    line = one_line(bot(tmp_path, *argv, BOT_STORAGE__DATABASE=str(db), BOT_WEBHOOKS__PORT="0"), 2)
    assert line.startswith(f"database error: {db}") and "not an SQLite database" in line


def _damage_a_table(db: Path) -> None:
    """Overwrite the middle of token_usage's pages, leaving the schema readable."""
    with closing(sqlite3.connect(db)) as conn:
        conn.executemany(
            "INSERT INTO journal (account_id, actor, action, reason, created_at)"
            " VALUES ('user:1', 'cli:t', 'note', ?, '2026-01-01T00:00:00')",
            [("x" * 500,) for _ in range(200)],
        )
        conn.commit()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            conn.execute("SELECT 1 FROM dbstat LIMIT 1")
        except sqlite3.OperationalError as error:  # dbstat is a compile-time option
            pytest.skip(f"this SQLite has no dbstat: {error}")
        pages = [
            row[0]
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'journal' AND pagetype = 'leaf'"
            )
        ]
    size = 4096
    with db.open("r+b") as file:
        for page in pages[2:-2]:
            file.seek((page - 1) * size + 8)
            file.write(b"\xff" * 64)


@pytest.mark.parametrize("argv", FRONTS, ids=lambda a: a[0])
def test_a_damaged_table_stops_every_front_end_at_start(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    db = make_db(tmp_path / "bot.db")
    _damage_a_table(db)
    line = one_line(bot(tmp_path, *argv, BOT_STORAGE__DATABASE=str(db), BOT_WEBHOOKS__PORT="0"), 2)
    assert line.startswith("database error: ") and "restore" in line, line


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """chattr +i: not even root may write (we run as root, so chmod would not do)."""
    done = subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not allowed here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


@pytest.mark.parametrize("argv", FRONTS, ids=lambda a: a[0])
def test_a_read_only_database(tmp_path: Path, argv: tuple[str, ...]) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    db = make_db(folder / "bot.db")
    with immutable(db, folder):
        done = bot(tmp_path, *argv, BOT_STORAGE__DATABASE=str(db), BOT_WEBHOOKS__PORT="0")
    line = one_line(done, 2)
    assert line.startswith(f"database error: {db}") and "not writable" in line, line


# ---- the sidecar ----------------------------------------------------------------------


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = bot(
            tmp_path,
            "webhooks",
            BOT_STORAGE__DATABASE=str(tmp_path / "b.db"),
            BOT_WEBHOOKS__PORT=str(port),
        )
    line = one_line(done, 2)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "BOT_WEBHOOKS__PORT" in line


def test_discord_unreachable_at_start_is_retried_in_one_line_each(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    # The real entry point with Discord's API pointed at that port.
    code = (
        "import sys, discord.http as h; "
        f"h.Route.BASE = 'http://127.0.0.1:{port}/api/v10'; "
        "from bot.cli import main; sys.exit(main(['run']))"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=bot_env(DISCORD_TOKEN=TOKEN, BOT_STORAGE__DATABASE=str(tmp_path / "b.db")),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        seen = []
        while not seen or "cannot reach Discord" not in seen[-1]:
            seen.append(process.stderr.readline())
            assert seen[-1], seen  # it printed the line before it ended
        assert "retrying in 1 s" in seen[-1], seen
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    assert process.returncode == 0 and "Traceback" not in rest, rest


# A second token of the right shape, for the fake Discord to refuse.
WRONG = "OTg3NjU0MzIxMDk4NzY1NDMy.GAbcde.zyxwvutsrqponmlkjihgfedcba9876543210AB"


_BOT_USER = {"id": "123456789012345678", "username": "agents", "discriminator": "0"}
_BOT_USER |= {"avatar": None, "bot": True}
_APPLICATION = {"id": _BOT_USER["id"], "name": "agents", "description": "", "icon": None}
_APPLICATION |= {"bot_public": True, "bot_require_code_grant": False, "flags": 0}
_APPLICATION |= {"verify_key": "0" * 64, "owner": _BOT_USER | {"id": "1", "bot": False}}


_ASKED: list[str] = []  # the paths the fake Discord was asked for


class _FakeDiscord(http.server.BaseHTTPRequestHandler):
    """Discord's REST API as far as a start goes: who the token is, whose app it is."""

    def do_GET(self) -> None:
        _ASKED.append(self.path)
        status, body = 404, {"message": "404: Not Found", "code": 0}
        if self.headers.get("Authorization") != f"Bot {TOKEN}":
            status, body = 401, {"message": "401: Unauthorized", "code": 0}
        elif self.path == "/api/v10/users/@me":
            status, body = 200, _BOT_USER
        elif self.path == "/api/v10/oauth2/applications/@me":
            status, body = 200, _APPLICATION
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")  # exactly: discord.py's test
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_discord(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeDiscord)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    _ASKED.clear()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def run_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str
) -> tuple[int, str]:
    """`python -m bot run`'s main in this process (the interpreter's start is what the
    other cases pay for; this one needs Discord, which is the fake here)."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith(("BOT_", "DISCORD_"))]:
        monkeypatch.delenv(name)
    for name, value in {"BOT_STORAGE__DATABASE": str(tmp_path / "bot.db"), **env}.items():
        monkeypatch.setenv(name, value)
    # Logs are not what is asserted here (stderr's printed lines are), and an earlier test
    # of this process may have left a handler on a stream that is closed since.
    monkeypatch.setattr(cli, "setup_logging", lambda: None)
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    code = cli.main(["run"])
    return code, capsys.readouterr().err


@pytest.mark.usefixtures("fake_discord")
def test_run_says_a_refused_token_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_here(tmp_path, monkeypatch, capsys, DISCORD_TOKEN=WRONG)
    assert code == 2 and err.splitlines() == [
        "Discord refused DISCORD_TOKEN (401): it is wrong or was reset; copy the bot token"
        " again from the developer portal (Bot > Reset Token)"
    ]


@pytest.mark.usefixtures("fake_discord")
def test_run_on_a_port_in_use_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_here(
            tmp_path, monkeypatch, capsys, DISCORD_TOKEN=TOKEN, BOT_WEBHOOKS__PORT=str(port)
        )
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"the sidecar cannot listen on 127.0.0.1:{port}")


@pytest.mark.usefixtures("fake_discord")
@pytest.mark.parametrize("fault", ["not a database", "damaged"])
def test_run_stops_on_a_database_fault_before_asking_discord(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fault: str
) -> None:
    db = tmp_path / "bot.db"
    if fault == "damaged":
        _damage_a_table(make_db(db))
    else:
        db.write_bytes(b"these are the operator's notes, not a database\n" * 100)
    code, err = run_here(tmp_path, monkeypatch, capsys, DISCORD_TOKEN=TOKEN)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"database error: {db}") and ("restore" in err) is (fault == "damaged")
    assert _ASKED == []  # the start stopped before Discord was asked anything


def test_the_standalone_sidecar_serves_avatars_and_warns_without_a_secret(
    tmp_path: Path,
) -> None:
    avatars = tmp_path / "data" / "avatars"
    avatars.mkdir(parents=True)
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
    name = "Zq3v9XkT0bN4mW8cR2aLpE7s"  # the shape of bot/core/avatars' random names
    (avatars / f"{name}.png").write_bytes(png)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "webhooks"],
        cwd=tmp_path,
        env=bot_env(BOT_WEBHOOKS__PORT=str(port)),  # ./data/bot.db, ./data/avatars
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(f"listening on http://127.0.0.1:{port}")
        base = f"http://127.0.0.1:{port}/avatars"
        with urllib.request.urlopen(f"{base}/{name}.png", timeout=30) as response:
            assert response.read() == png
        with pytest.raises(urllib.error.HTTPError) as guessed:
            urllib.request.urlopen(f"{base}/1.png", timeout=30)
        assert guessed.value.code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err
    assert "listening on" not in out  # said once, on the line read above
    warnings = [line for line in err.splitlines() if "LEMONSQUEEZY_WEBHOOK_SECRET" in line]
    assert len(warnings) == 1 and "every webhook will be refused (503)" in warnings[0], err


# ---- logs -------------------------------------------------------------------------------


def test_json_logs_one_object_a_line_and_no_voice_warnings(tmp_path: Path) -> None:
    done = bot(
        tmp_path,
        "console",
        "--user",
        "1",
        stdin="/tokens\n",
        BOT_LOG_FORMAT="json",
        BOT_LOG_LEVEL="DEBUG",
        BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"),
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines  # at DEBUG something is said
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry)
    assert "voice will NOT be supported" not in done.stderr
