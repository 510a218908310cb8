"""Images in: /chat's attachment and a plain thread message's picture go to the vision
model once, metered from the API's usage; bad pictures are refused before anything is
held; later turns keep only a short note of the picture."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, StandInAttachment
from bot.services import Services
from tests.bot.conftest import GUILD
from tests.bot.helpers import text
from tests.bot.test_chat_threads import FakeChannel
from tests.fakes.openai_server import IMAGE_TOKENS
from tests.hostile import png_header_only, png_pixel_bomb, png_truncated

ACCOUNT = "user:1"


def _photo(size: tuple[int, int] = (1600, 900)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 80, 20)).save(out, "JPEG")
    return out.getvalue()


def _image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    parts = []
    for message in body["messages"]:
        if isinstance(message["content"], list):
            parts += [p for p in message["content"] if p["type"] == "image_url"]
    return parts


@pytest.fixture
async def dm(as_user: Any) -> CommandRunner:
    runner: CommandRunner = as_user(1, guild_id=None)
    await runner.run('/agent create name:Nova prompt:"An astronomer"')
    return runner


async def test_an_image_goes_to_the_vision_model_once_and_is_metered(
    dm: CommandRunner, services: Services, fake_openai: Any
) -> None:
    services.config.openai.vision_model = "vision-model-x"
    fake_openai.chat_answer = "An orange square."
    photo = StandInAttachment("sky.jpg", _photo())

    sent = await dm.invoke(["chat"], {"agent": "Nova", "message": "What is this?", "image": photo})

    assert "An orange square." in text(sent)
    request = fake_openai.completed("chat")[-1]
    assert request.body["model"] == "vision-model-x"
    (part,) = _image_parts(request.body)
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent_picture = Image.open(io.BytesIO(__import__("base64").b64decode(url.split(",", 1)[1])))
    assert max(sent_picture.size) == services.config.chat.image_side  # scaled down
    assert request.usage["prompt_tokens"] > IMAGE_TOKENS  # the fake counts the picture
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == request.usage["total_tokens"]
    assert balance.tokens_held == 0 and await services.ledger.verify() == []

    # The next turn carries a note of the picture, not the picture.
    fake_openai.chat_answer = "Still orange."
    await dm.run('/chat agent:Nova message:"And now?"')
    later = fake_openai.completed("chat")[-1].body
    assert _image_parts(later) == [] and later["model"] == services.config.openai.chat_model
    notes = [m["content"] for m in later["messages"] if "[image sent: sky.jpg" in m["content"]]
    assert notes == ["What is this?\n[image sent: sky.jpg, 1600x900]"]


@pytest.mark.parametrize(
    "data",
    [b"", b"%PDF-1.4 not a picture", png_truncated(), png_pixel_bomb(), png_header_only(1, 0)],
    ids=["empty", "pdf", "truncated", "bomb", "zero-height"],
)
async def test_bad_images_are_refused_uncharged(
    dm: CommandRunner, services: Services, fake_openai: Any, data: bytes
) -> None:
    picture = StandInAttachment("x.png", data)
    sent = await dm.invoke(["chat"], {"agent": "Nova", "message": "Look", "image": picture})
    assert "❌" in text(sent) and "nothing was charged" not in text(sent).lower()
    assert fake_openai.count("chat") == 0
    balance = await services.ledger.balance(ACCOUNT)
    assert balance.tokens_used == 0 and balance.tokens_held == 0
    holds = await services.ledger.store.reader.execute_fetchall("SELECT COUNT(*) FROM holds")
    assert holds[0][0] == 0  # refused before anything was held


async def test_too_large_an_image_is_refused_with_the_limit(
    dm: CommandRunner, services: Services, fake_openai: Any
) -> None:
    services.config.limits.max_avatar_bytes = 1000
    sent = await dm.invoke(
        ["chat"],
        {"agent": "Nova", "message": "Look", "image": StandInAttachment("a.jpg", _photo())},
    )
    assert "images can be at most" in text(sent)
    assert fake_openai.count("chat") == 0


async def test_a_plain_thread_message_with_a_picture(
    owner: CommandRunner, bot: AgentBot, services: Services, fake_openai: Any
) -> None:
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    channel = FakeChannel(900, webhooks_allowed=False)
    owner.channel = channel
    await owner.run('/chat agent:Nova message:"Hi"')
    (thread,) = channel.threads_made
    services.config.discord.message_content = True
    cog: Any = bot.get_cog("ChatCog")
    photo = StandInAttachment("moon.jpg", _photo((400, 300)))
    message = SimpleNamespace(
        content="",
        attachments=[photo],
        author=SimpleNamespace(id=2, bot=False, roles=[]),
        channel=thread,
        guild=SimpleNamespace(id=GUILD),
    )
    fake_openai.chat_answer = "That is the Moon."
    await cog.on_message(message)
    (part,) = _image_parts(fake_openai.completed("chat")[-1].body)
    assert part["image_url"]["url"].startswith("data:image/png;base64,")
    assert thread.log[-1].kwargs["embed"].description == "That is the Moon."
