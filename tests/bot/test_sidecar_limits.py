"""Slow clients against the sidecar (issue 10, finding 8): a bounded local run.

Loopback only, a bounded number of connections, every wait bounded in time."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from bot.config import Config
from bot.front.standin import CommandRunner
from bot.http.guard import accept_backlog, quiet_accept_errors
from bot.http.sidecar import GUARD, start_sidecar
from bot.services import Services
from tests.children import bot_env

SLOW = 120  # connections that send half a request head and then nothing
FILES = 64  # the child's descriptor limit: SLOW connections would exhaust it
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _attack(port: int) -> list[Connection]:
    """SLOW connections at once. The sidecar keeps its listen queue short, so the kernel
    drops some handshakes and their clients retry (after 1 s, 3 s): bounded at 5 s."""

    async def one() -> Connection | None:
        try:
            async with asyncio.timeout(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, TimeoutError):
            return None
        writer.write(HEAD)
        return reader, writer

    return [c for c in await asyncio.gather(*(one() for _ in range(SLOW))) if c is not None]


def _open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def test_slow_headers_neither_exhaust_the_sidecar_nor_flood_its_log(
    tmp_path: Path,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = bot_env(
        BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"),
        BOT_WEBHOOKS__PORT=str(port),
        BOT_WEBHOOKS__MAX_CONNECTIONS="1000",  # the descriptor limit must win
        BOT_WEBHOOKS__HEADER_TIMEOUT_SECONDS="1",
        LEMONSQUEEZY_WEBHOOK_SECRET="s",
    )
    err = (tmp_path / "stderr").open("w+")
    process = subprocess.Popen(  # noqa: ASYNC220 (started once; every wait is bounded)
        [sys.executable, "-m", "bot", "webhooks"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        preexec_fn=_limit_files,
    )
    slow: list[Connection] = []
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert line.startswith("listening on"), (tmp_path / "stderr").read_text()
        slow = await _attack(port)
        assert len(slow) > FILES // 2  # more than it may hold open
        # Connections take at most half its descriptors (plus a batch being accepted and
        # those still closing): it never runs out, which the old sidecar did at once.
        assert _open_files(process.pid) < FILES - 4
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for _ in range(3):  # answered during the attack: the oldest slow one makes room
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
                    assert (await response.json())["database"] is True
        # A slow client is closed by the sidecar after its header timeout. (Not all of
        # the attack's: the kernel may have dropped a handshake's last ACK from a full
        # queue, and that client never learns; the sidecar never knew it.)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        slow.append((reader, writer))
        writer.write(HEAD)
        async with asyncio.timeout(30):
            assert await reader.read() in (b"", _BUSY)
    finally:
        for _, writer in slow:
            writer.close()
        process.terminate()
        code = await asyncio.to_thread(process.wait, 30)
    log = (tmp_path / "stderr").read_text()
    assert code == 0, log
    assert "Traceback" not in log and "Too many open files" not in log, log
    assert len(log.splitlines()) <= 5, log  # the limit is said once, not once a connection


async def _sidecar(app_config: Config, services: Services) -> tuple[web.AppRunner, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        app_config.webhooks.port = s.getsockname()[1]
    runner = await start_sidecar(app_config, services.ledger)
    return runner, app_config.webhooks.port


async def test_a_body_sent_too_slowly_is_answered_408(
    app_config: Config, services: Services
) -> None:
    app_config.webhooks.body_timeout_seconds = 0.2
    app_config.webhooks.header_timeout_seconds = 60  # not what closes it
    runner, port = await _sidecar(app_config, services)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webhooks/lemonsqueezy HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"meta": '
        )  # and the rest never comes
        async with asyncio.timeout(20):
            status = await reader.readline()
        # ... and the connection ends with it: aiohttp's lingering read of the body
        # would have held it 10 s more (5 s is far above the 0.2 s this takes).
        async with asyncio.timeout(5):
            rest = await reader.read()
        writer.close()
        assert status.startswith(b"HTTP/1.1 408"), status
        assert rest.endswith(b'{"error": "body too slow"}'), rest
    finally:
        await runner.cleanup()


async def test_accepts_failing_for_want_of_descriptors_are_one_line_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio logged a traceback per failed accept: 342 MB of them in 90 s."""
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    passed: list[object] = []
    loop.set_exception_handler(lambda _loop, context: passed.append(context["message"]))
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.DEBUG, logger="bot.http.guard"):
            for _ in range(500):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    }
                )
            loop.call_exception_handler({"message": "something else", "exception": ValueError()})
    finally:
        loop.set_exception_handler(before)
    said = [r for r in caplog.records if r.name == "bot.http.guard"]
    assert len(said) == 1 and said[0].exc_info is None
    assert "cannot accept connections: Too many open files" in said[0].getMessage()
    assert passed == ["something else"]  # other errors reach the usual handler


async def test_the_discord_side_keeps_working_while_the_sidecar_is_attacked(
    app_config: Config, services: Services, owner: CommandRunner
) -> None:
    """In `run` the bot shares the sidecar's process: with the sidecar full of slow
    clients, commands still answer and are charged (they failed in the review)."""
    app_config.webhooks.max_connections = 8
    runner, port = await _sidecar(app_config, services)
    server = runner.server
    assert server is not None
    slow: list[asyncio.StreamWriter] = []
    try:
        for _ in range(40):  # five times what it may hold
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(HEAD)
            slow.append(writer)
        await owner.run('/agent create name:Nova prompt:"An astronomer"')
        tokens = "\n".join(s.text() for s in await owner.run("/tokens"))
        chat = "\n".join(s.text() for s in await owner.run("/chat agent:Nova message:hello"))
        assert "Remaining: 250,000" in tokens
        assert "went wrong" not in chat and "busy" not in chat, chat
        balance = await services.ledger.balance("guild:1000")
        assert balance.tokens_used > 0 and balance.tokens_held == 0
        live = [h for h in server.connections if h.transport is not None]
        assert len(live) <= 8  # the rest were closed to make room
        guard = runner.app[GUARD]
        # Every handshake done is accepted, or still in the kernel's queue (backlog + 1).
        assert guard.evicted >= 40 - 8 - (accept_backlog(8) + 1)
    finally:
        for writer in slow:
            writer.close()
        await runner.cleanup()
