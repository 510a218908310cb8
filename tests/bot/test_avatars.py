"""Avatars: the spec's flows, costs and messages; failures charge nothing."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import assert_mentions_disabled, text

ACCOUNT = f"guild:{GUILD}"


async def _spend(services: Services, amount: int) -> None:
    hold = await services.ledger.reserve(ACCOUNT, amount, "chat", 1, GUILD, "m")
    await services.ledger.commit(hold, amount)


def _png(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


async def _avatar(services: Services) -> Path | None:
    agent = await services.repo.agent(ACCOUNT, "Nova")
    assert agent is not None
    return Path(agent.avatar_path) if agent.avatar_path else None


@pytest.fixture
async def nova(owner: CommandRunner) -> None:
    await owner.run('/agent create name:Nova prompt:"A patient astronomer"')


async def test_generation_charges_5000_and_says_so(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    sent = await owner.run("/avatar generate agent:Nova style:watercolor")
    assert sent[0].kind == "defer"
    assert "✅ Avatar generated successfully!" in text(sent)
    assert "Used 5,000 tokens. 245,000 remaining." in text(sent)
    assert sent[-1].files and sent[-1].files[0].filename == "avatar.png"
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 5000 and balance.tokens_held == 0
    entries = [
        e for e in await services.ledger.history(ACCOUNT) if e.operation_type == "avatar_generation"
    ]
    assert len(entries) == 1
    assert (
        entries[0].tokens_used == 5000
        and entries[0].model_used == services.config.openai.image_model
    )
    path = await _avatar(services)
    assert path is not None and path.is_file()
    with Image.open(path) as image:
        assert image.size == (512, 512) and image.format == "PNG"
    assert await services.ledger.verify() == []


async def test_insufficient_tokens_refuses_without_calling_the_api(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    await _spend(services, 248_000)
    sent = await owner.run("/avatar generate agent:Nova")
    assert sent[0].kind != "defer" and sent[0].ephemeral
    body = text(sent)
    assert "❌ Insufficient Tokens" in body
    assert (
        "Avatar generation requires 5,000 tokens. You have 2,000 tokens remaining. "
        "Upgrade to Pro for 10M tokens!" in body
    )
    assert sent[0].buttons() and "checkout" in (sent[0].buttons()[0][1] or "")
    assert fake_openai.count("images") == 0
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == 248_000


async def test_regeneration_charges_again_and_deletes_the_old_file(
    owner: CommandRunner, services: Services, nova: None
) -> None:
    await owner.run("/avatar generate agent:Nova")
    first = await _avatar(services)
    sent = await owner.run("/avatar generate agent:Nova")
    assert "Used 5,000 tokens. 240,000 remaining." in text(sent)
    second = await _avatar(services)
    assert first is not None and second is not None and first != second
    assert not first.exists() and second.exists()
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == 10_000


async def test_upload_is_free(owner: CommandRunner, services: Services, nova: None) -> None:
    await owner.run("/avatar generate agent:Nova")
    generated = await _avatar(services)
    sent = await owner.invoke(
        ["avatar", "upload"], {"agent": "Nova", "image": StandInAttachment("me.png", _png())}
    )
    assert "✅ Avatar uploaded!" in text(sent) and "No tokens used" in text(sent)
    uploaded = await _avatar(services)
    assert (
        uploaded is not None
        and uploaded.exists()
        and generated is not None
        and not generated.exists()
    )
    assert (await services.ledger.balance(ACCOUNT)).tokens_used == 5000
    entries = await services.ledger.history(ACCOUNT)
    assert entries[0].operation_type == "avatar_upload" and entries[0].tokens_used == 0


@pytest.mark.parametrize("failure", ["500", "timeout", "content_policy", "malformed"])
async def test_failed_generation_charges_nothing_and_keeps_the_old_avatar(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None, failure: str
) -> None:
    await owner.invoke(
        ["avatar", "upload"], {"agent": "Nova", "image": StandInAttachment("a.png", _png())}
    )
    before = await _avatar(services)
    fake_openai.fail_next("images", failure)
    sent = await owner.run("/avatar generate agent:Nova")
    body = text(sent)
    assert "nothing was charged" in body.lower() or "Nothing was charged" in body
    assert "Traceback" not in body and "Error code" not in body
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.tokens_held == 0
    assert await _avatar(services) == before and before is not None and before.exists()
    assert await services.ledger.verify() == []


async def test_twenty_concurrent_generations_with_room_for_ten(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    await _spend(services, 200_000)  # 50,000 left: room for exactly 10
    results = await asyncio.gather(*(owner.run("/avatar generate agent:Nova") for _ in range(20)))
    ok = [r for r in results if "generated successfully" in text(r)]
    refused = [r for r in results if "Insufficient Tokens" in text(r)]
    assert len(ok) == 10 and len(refused) == 10
    assert fake_openai.count("images") == 10
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 250_000 and balance.tokens_held == 0 and balance.available == 0
    assert await services.ledger.verify() == []


async def test_every_image_request_had_a_hold(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    await owner.run("/avatar generate agent:Nova")
    fake_openai.fail_next("images", "500")
    await owner.run("/avatar generate agent:Nova")
    await owner.run("/avatar generate agent:Nova")
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT COUNT(*) FROM holds WHERE operation_type = 'avatar_generation'"
    )
    assert rows[0][0] == fake_openai.count("images") == 3


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("fake.png", b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "PNG"),
        ("page.png", b"<html><body>hi</body></html>", "PNG"),
        ("cut.png", _png()[:60], ""),
        ("empty.png", b"", ""),
    ],
)
async def test_bad_uploads_are_refused(
    owner: CommandRunner, services: Services, nova: None, name: str, data: bytes, message: str
) -> None:
    sent = await owner.invoke(
        ["avatar", "upload"], {"agent": "Nova", "image": StandInAttachment(name, data)}
    )
    body = text(sent)
    assert "❌" in body and message in body
    assert await _avatar(services) is None
    assert not list(services.config.data_path("avatars").glob("*.png"))


async def test_oversize_upload_is_refused_before_reading(
    owner: CommandRunner, services: Services, nova: None
) -> None:
    big = StandInAttachment(
        "big.png", b"\x89PNG" + b"0" * (services.config.limits.max_avatar_bytes + 1)
    )
    sent = await owner.invoke(["avatar", "upload"], {"agent": "Nova", "image": big})
    assert "avatars can be at most 8 MB" in text(sent)
    assert await _avatar(services) is None


async def test_decompression_bomb_is_refused(
    owner: CommandRunner, services: Services, nova: None
) -> None:
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, "PNG")  # tiny file, 400 megapixels
    sent = await owner.invoke(
        ["avatar", "upload"],
        {"agent": "Nova", "image": StandInAttachment("bomb.png", out.getvalue())},
    )
    assert "❌" in text(sent)
    assert await _avatar(services) is None


async def test_member_without_rights_cannot_change_the_avatar(
    owner: CommandRunner, as_user: Any, services: Services, fake_openai: Any, nova: None
) -> None:
    sent = await as_user(2).run("/avatar generate agent:Nova")
    assert "Only Nova's creator" in text(sent)
    assert fake_openai.count("images") == 0
    assert_mentions_disabled(sent)


async def test_start_up_deletes_old_avatar_files_no_agent_uses(
    owner: CommandRunner, services: Services, app_config: Any, nova: None
) -> None:
    await owner.invoke(
        ["avatar", "upload"], {"agent": "Nova", "image": StandInAttachment("a.png", _png())}
    )
    (kept,) = services.avatars.folder.iterdir()
    old_orphan = services.avatars.folder / "1-deadbeef0000.png"
    young_orphan = services.avatars.folder / "1-cafe00000000.png"  # another process's, maybe
    half_written = services.avatars.folder / "1-deadbeef0001.tmp"
    for path in (old_orphan, young_orphan, half_written):
        path.write_bytes(b"x")
    long_ago = time.time() - app_config.limits.hold_ttl_seconds - 60
    for path in (old_orphan, half_written, kept):
        os.utime(path, (long_ago, long_ago))

    assert await services.avatars.sweep_files() == 2
    assert sorted(p.name for p in services.avatars.folder.iterdir()) == sorted(
        [kept.name, young_orphan.name]
    )


async def test_overlapping_generations_leave_only_the_current_file(
    owner: CommandRunner, services: Services, fake_openai: Any, nova: None
) -> None:
    # Each generation deletes the file its commit replaced, not the one the agent had
    # when it started, and each reply carries its own image, so none goes missing.
    sent = await asyncio.gather(*(owner.run("/avatar generate agent:Nova") for _ in range(4)))
    for one in sent:
        assert "✅ Avatar generated successfully!" in text(one)
        (image,) = [f for s in one for f in s.files]
        assert Image.open(image.fp).size == (512, 512)
    agent = await services.repo.agent(f"guild:{GUILD}", "Nova")
    assert agent is not None and agent.avatar_version == 4
    assert [p.name for p in services.avatars.folder.iterdir()] == [Path(agent.avatar_path).name]
