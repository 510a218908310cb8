"""`check --online` (issue 16, point 2): Discord, the AI API's models and LemonSqueezy's
store and variant are asked, on one local fake of the three; exit 1 on any refusal."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import bot.front.online as online
from bot.cli import main

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbcde.abcdefghijklmnopqrstuvwxyz0123456789AB"
MODELS = ["gpt-5.4-mini", "text-embedding-3-small", "gpt-image-2.5-sunburst"]


def _fake() -> web.Application:
    app = web.Application()

    async def me(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bot {TOKEN}":
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        return web.json_response({"id": "123456789012345678", "username": "Nova Bot"})

    async def models(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sk-good":
            return web.json_response({"error": {"message": "bad key", "type": "x"}}, status=401)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "x"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def shop(request: web.Request) -> web.Response:
        if request.match_info["id"] not in {"11", "22"}:
            return web.json_response({"errors": [{"status": "404"}]}, status=404)
        return web.json_response({"data": {"id": request.match_info["id"]}})

    app.router.add_get("/api/v10/users/@me", me)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/{kind:stores|variants}/{id}", shop)
    return app


@pytest.fixture
async def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    for name in list(os.environ):
        if name.upper().startswith(("BOT_", "DISCORD_", "OPENAI_", "LEMONSQUEEZY_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    server = TestServer(_fake())
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    monkeypatch.setattr(online, "DISCORD_API", f"{base}/api/v10")
    monkeypatch.setenv("BOT_STORAGE__DATABASE", str(tmp_path / "bot.db"))
    monkeypatch.setenv("BOT_OPENAI__BASE_URL", f"{base}/v1")
    monkeypatch.setenv("BOT_LEMONSQUEEZY__API_URL", base)
    monkeypatch.setenv("BOT_LEMONSQUEEZY__STORE_ID", "11")
    monkeypatch.setenv("BOT_LEMONSQUEEZY__VARIANT_ID", "22")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-good")
    monkeypatch.setenv("LEMONSQUEEZY_API_KEY", "ls-key")
    monkeypatch.setenv("LEMONSQUEEZY_WEBHOOK_SECRET", "s")
    try:
        yield base
    finally:
        await server.close()


async def _check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    # main() runs its own loop: give it a thread, the fake keeps serving on ours.
    code = await asyncio.to_thread(main, ["check", "--online"])
    return code, capsys.readouterr().out


async def test_every_service_answers(fake: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await _check(capsys)
    assert code == 0, out
    assert "discord: ok, the bot is Nova Bot" in out
    assert "ai: openai.embedding_model text-embedding-3-small ok" in out
    assert "lemonsqueezy: lemonsqueezy.variant_id 22 ok" in out


async def test_refusals_are_missing_lines_and_exit_1(
    fake: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN[:-1] + "C")
    monkeypatch.setenv("BOT_OPENAI__CHAT_MODEL", "gpt-nonexistent")
    monkeypatch.setenv("BOT_LEMONSQUEEZY__VARIANT_ID", "99")
    code, out = await _check(capsys)
    assert code == 1
    missing = [line for line in out.splitlines() if line.startswith("missing: ")]
    assert missing == [
        "missing: Discord refused DISCORD_TOKEN (401): copy it again",
        "missing: LemonSqueezy has no lemonsqueezy.variant_id 99 (404)",
        "missing: the AI API has no model gpt-nonexistent (openai.chat_model)",
    ], out
