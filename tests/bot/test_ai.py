"""The AI gateway: the real openai client against the fake, strict validation on."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

import numpy as np
import openai
import pytest

from bot.config import OpenAISettings
from bot.core.ai import AIGateway, _vector
from bot.errors import AIUnavailable, ContentRejected


@pytest.fixture
async def gateways(fake_openai: Any) -> Any:
    settings = OpenAISettings(base_url=fake_openai.base_url, timeout_seconds=2, max_retries=0)
    strict = AIGateway(settings, "k", strict=True)
    loose = AIGateway(settings, "k")
    yield strict, loose
    await strict.close()
    await loose.close()


async def test_image_is_base64_png_with_usage(gateways: Any, fake_openai: Any) -> None:
    strict, _ = gateways
    result = await strict.image("a cat")
    assert result.png.startswith(b"\x89PNG") and result.total_tokens == fake_openai.reported_tokens(
        "images"
    )
    assert fake_openai.requests[-1].body["model"] == strict.settings.image_model


async def test_chat_returns_the_reported_usage(gateways: Any, fake_openai: Any) -> None:
    strict, _ = gateways
    fake_openai.chat_answer = "Hello there"
    result = await strict.chat([{"role": "user", "content": "hi"}], 50)
    usage = fake_openai.completed("chat")[-1].usage
    assert result.text == "Hello there"
    assert (result.prompt_tokens, result.completion_tokens, result.total_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        usage["total_tokens"],
    )
    assert fake_openai.requests[-1].body["max_completion_tokens"] == 50


async def test_base64_and_float_embeddings_agree(gateways: Any, fake_openai: Any) -> None:
    strict, loose = gateways
    texts = ["the red planet", "rings of ice", "a comet"]
    as_float = await strict.embed(texts)
    as_base64 = await loose.embed(texts)
    encodings = [r.body.get("encoding_format") for r in fake_openai.requests]
    assert encodings == ["float", "base64"]
    assert as_float.vectors.shape == (3, 1536) and as_float.vectors.dtype == np.float32
    assert np.allclose(as_float.vectors, as_base64.vectors)
    assert as_float.total_tokens == as_base64.total_tokens > 0
    assert as_base64.vectors.dtype == np.float32


def test_a_vector_decodes_from_base64_or_from_floats() -> None:
    values = np.array([0.5, -1.25, 3.0], dtype="<f4")
    encoded = base64.b64encode(values.tobytes()).decode()
    assert _vector(encoded).tolist() == [0.5, -1.25, 3.0]
    assert _vector([0.5, -1.25, 3.0]).dtype == np.float32  # a server that ignored the format
    with pytest.raises(binascii.Error):
        _vector("not base64!")


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("500", AIUnavailable),
        ("429", AIUnavailable),
        ("timeout", AIUnavailable),
        ("content_policy", ContentRejected),
        ("moderation_blocked", ContentRejected),
        ("malformed", AIUnavailable),
        ("missing_fields", AIUnavailable),
    ],
)
@pytest.mark.parametrize("endpoint", ["images", "chat", "embeddings"])
async def test_failures_map_to_domain_errors(
    gateways: Any, fake_openai: Any, kind: str, error: type[Exception], endpoint: str
) -> None:
    strict, _ = gateways
    if kind == "timeout" and endpoint != "images":
        pytest.skip("one timeout case is enough (each waits for the client's timeout)")
    if kind == "timeout":  # its one request never answers: a short timeout is as good
        settings = OpenAISettings(base_url=fake_openai.base_url, timeout_seconds=0.3, max_retries=0)
        strict = AIGateway(settings, "k", strict=True)
    fake_openai.fail_next(endpoint, kind)
    calls = {
        "images": lambda: strict.image("x"),
        "chat": lambda: strict.chat([{"role": "user", "content": "x"}]),
        "embeddings": lambda: strict.embed(["x"]),
    }
    try:
        with pytest.raises(error) as raised:
            await calls[endpoint]()
    finally:
        if strict is not gateways[0]:
            await strict.close()
    message = raised.value.user_message  # type: ignore[attr-defined]
    assert "nothing was charged" in message.lower() or "Nothing was charged" in message
    assert "Error code" not in message and "http" not in message.lower()


async def test_the_client_holds_at_most_max_connections(fake_openai: Any) -> None:
    settings = OpenAISettings(base_url=fake_openai.base_url, max_retries=0, max_connections=3)
    gateway = AIGateway(settings, "k")
    try:
        fake_openai.latency = 0.05
        await asyncio.gather(*(gateway.embed([f"text {n}"]) for n in range(12)))
        assert fake_openai.count("embeddings") == 12
        assert fake_openai.max_in_flight <= 3
    finally:
        await gateway.close()


# Text, a history, and a vision turn: the shapes of message ChatService builds.
_MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are Nova."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there, héllo 🌌"},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64,AAAA", "detail": "auto"},
            },
        ],
    },
]


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_sends_what_the_sdk_create_would(fake_openai: Any, stream: bool) -> None:
    """The gateway skips the SDK's typed transform of each message (bot/core/ai.py
    `_chat_body`); what goes on the wire must still be what `create` sends: the same
    path, auth header and JSON body."""
    seen: list[tuple[str, str | None, dict[str, Any]]] = []

    async def record(request: Any) -> None:
        body = json.loads(request.content)
        seen.append((str(request.url), request.headers.get("authorization"), body))

    settings = OpenAISettings(base_url=fake_openai.base_url, max_retries=0)
    client = openai.DefaultAsyncHttpx2Client(event_hooks={"request": [record]})
    gateway = AIGateway(settings, "k", strict=True, http_client=client)
    try:
        model = settings.chat_model
        extra: dict[str, Any] = {}
        if stream:
            await gateway.chat_stream(_MESSAGES, _ignore, 50)
            extra = {"stream": True, "stream_options": {"include_usage": True}}
            answer = await gateway.client.chat.completions.create(
                model=model, messages=_MESSAGES, max_completion_tokens=50, **extra
            )
            async for _ in answer:  # type: ignore[union-attr]
                pass
        else:
            await gateway.chat(_MESSAGES, 50)
            await gateway.client.chat.completions.create(
                model=model,
                messages=_MESSAGES,  # type: ignore[arg-type]
                max_completion_tokens=50,
            )
    finally:
        await gateway.close()
    ours, sdks = seen
    assert ours == sdks
    assert ours[1] == "Bearer k" and ours[2]["messages"] == _MESSAGES
    assert ours[2].get("stream", False) is stream


async def _ignore(piece: str) -> None:
    del piece
