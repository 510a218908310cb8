"""The AI gateway: one `AsyncOpenAI` client behind three calls (image, chat, embeddings),
each returning its result with the API's own usage figures. Chat can also stream: each
piece of text goes to a callback as it arrives, and the usage comes from the stream's
usage chunk (asked for with `stream_options.include_usage`).

Errors become domain errors: a content-policy refusal is `ContentRejected`; rate limits,
5xx, timeouts, connection errors and answers we cannot use are `AIUnavailable`. No raw
exception text ever reaches a member; the operator sees the status in the log, never
the key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai

from bot.config import OpenAISettings
from bot.errors import AIUnavailable, ContentRejected

log = logging.getLogger(__name__)

_POLICY_CODES = {"content_policy_violation", "moderation_blocked"}
# Without a key the SDK refuses to start; a local OpenAI-compatible server ignores it.
_PLACEHOLDER_KEY = "not-needed-for-a-local-server"


@dataclass(frozen=True)
class ImageResult:
    png: bytes
    model: str
    total_tokens: int | None


@dataclass(frozen=True)
class ChatResult:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: np.ndarray  # (n, d) float32, in input order
    model: str
    total_tokens: int


class AIGateway:
    def __init__(
        self,
        settings: OpenAISettings,
        api_key: str | None,
        *,
        strict: bool = False,
        http_client: Any = None,
    ) -> None:
        self.settings = settings
        kwargs: dict[str, Any] = {
            "api_key": api_key or _PLACEHOLDER_KEY,
            "timeout": settings.timeout_seconds,
            "max_retries": settings.max_retries,
        }
        if settings.base_url:
            kwargs["base_url"] = settings.base_url
        client = http_client or _pooled_client(settings.max_connections)
        if client is not None:
            kwargs["http_client"] = client
        self.client = openai.AsyncOpenAI(**kwargs, _strict_response_validation=strict)
        # Compact base64, decoded here straight into float32 arrays: left to the SDK it
        # becomes lists of Python floats (which we would turn back into arrays), a third
        # of a document upload's time. Strict validation checks the answer as floats
        # before anything decodes it, so strict mode (the tests') asks for floats.
        self._embedding_format = "float" if strict else "base64"

    async def close(self) -> None:
        await self.client.close()

    async def image(self, prompt: str) -> ImageResult:
        model = self.settings.image_model
        with _mapped("image", model):
            answer = await self.client.images.generate(
                model=model,
                prompt=prompt,
                n=1,
                size=self.settings.image_size,  # type: ignore[arg-type]
            )
        data = answer.data[0].b64_json if answer.data else None
        if not data:  # GPT image models answer in base64 only; we never fetch a URL
            log.error("the image API answered without b64_json (model %s)", model)
            raise AIUnavailable()
        try:
            png = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            log.error("the image API answered with invalid base64 (model %s)", model)
            raise AIUnavailable() from None
        total = answer.usage.total_tokens if answer.usage else None
        log.info("image from %s: %d bytes, usage %s tokens", model, len(png), total)
        return ImageResult(png, model, total)

    async def chat(
        self,
        messages: list[dict[str, Any]],
        max_completion_tokens: int | None = None,
        *,
        model: str | None = None,
    ) -> ChatResult:
        model = model or self.settings.chat_model
        with _mapped("chat", model):
            answer = await self.client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_completion_tokens=max_completion_tokens or self.settings.max_completion_tokens,
            )
        if not answer.choices or answer.usage is None:
            log.error("the chat API answered without choices or usage (model %s)", model)
            raise AIUnavailable()
        message = answer.choices[0].message
        text = message.content or message.refusal or ""
        usage = answer.usage
        log.info(
            "chat from %s: %d prompt + %d completion tokens",
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        return ChatResult(
            text, model, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        )

    async def chat_stream(
        self,
        messages: list[dict[str, Any]],
        on_text: Callable[[str], Awaitable[None]],
        max_completion_tokens: int | None = None,
        *,
        model: str | None = None,
    ) -> ChatResult:
        """Stream a chat answer: `on_text` gets each piece as it arrives. A stream that
        breaks, or ends without its usage chunk, raises AIUnavailable: what `on_text` got
        until then is all the caller has (and what a partial charge counts)."""
        model = model or self.settings.chat_model
        pieces: list[str] = []
        usage = None
        with _mapped("chat stream", model):
            stream = await self.client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_completion_tokens=max_completion_tokens or self.settings.max_completion_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
            try:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices[:1]:
                        piece = choice.delta.content or choice.delta.refusal
                        if piece:
                            pieces.append(piece)
                            await on_text(piece)
            finally:
                await stream.close()
        if usage is None:
            log.error("the chat stream of %s ended without its usage chunk", model)
            raise AIUnavailable()
        log.info(
            "chat stream from %s: %d prompt + %d completion tokens",
            model,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        return ChatResult(
            "".join(pieces), model, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens
        )

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        model = self.settings.embedding_model
        with _mapped("embeddings", model):
            answer = await self.client.embeddings.create(
                model=model,
                input=texts,
                encoding_format=self._embedding_format,  # type: ignore[arg-type]
            )
        rows = sorted(answer.data, key=lambda e: e.index)
        if len(rows) != len(texts):
            log.error("the embeddings API answered %d vectors for %d inputs", len(rows), len(texts))
            raise AIUnavailable()
        try:
            vectors = np.vstack([_vector(r.embedding) for r in rows])
        except (ValueError, TypeError, binascii.Error):
            log.error("the embeddings API answered vectors of uneven size or bad encoding")
            raise AIUnavailable() from None
        log.info(
            "embeddings from %s: %d inputs, %d tokens", model, len(texts), answer.usage.total_tokens
        )
        return EmbeddingResult(vectors, model, answer.usage.total_tokens)


def _pooled_client(max_connections: int) -> Any:
    """The SDK's HTTP client with at most `max_connections` open: its connection pool
    re-checks every open connection on each request, so hundreds at once cost the event
    loop time that grows with their square (the load suite's worst stall halved at 64).
    Calls beyond the cap wait for a connection, within the request's timeout."""
    try:
        import httpx2

        factory = openai.DefaultAsyncHttpx2Client
    except (ImportError, AttributeError):  # an SDK before 3.x: keep its own defaults
        return None
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return factory(limits=limits)


def _vector(embedding: object) -> np.ndarray:
    """One embedding as float32: base64 of little-endian floats, or a list of floats
    (a server may ignore the format we asked for)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


class _mapped:
    """Turns the SDK's exceptions into domain errors, logging what an operator needs."""

    def __init__(self, call: str, model: str) -> None:
        self.call = call
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, openai.BadRequestError) and error.code in _POLICY_CODES:
            log.info("%s refused by content policy (%s)", self.call, error.code)
            raise ContentRejected() from None
        if isinstance(error, openai.APITimeoutError):
            log.warning("%s to %s timed out", self.call, self.model)
        elif isinstance(error, openai.APIConnectionError):
            log.warning("%s to %s: connection failed", self.call, self.model)
        elif isinstance(error, openai.RateLimitError | openai.InternalServerError):
            log.warning("%s to %s: HTTP %d", self.call, self.model, error.status_code)
        elif isinstance(error, openai.APIStatusError):
            # 401, 403, 404, other 400s: a configuration problem for the operator.
            log.error(
                "%s to %s refused: HTTP %d %s", self.call, self.model, error.status_code, error.code
            )
        elif isinstance(error, openai.APIResponseValidationError | json.JSONDecodeError | KeyError):
            log.error(
                "%s to %s: an answer we cannot use (%s)",
                self.call,
                self.model,
                type(error).__name__,
            )
        elif isinstance(error, openai.OpenAIError):
            log.error("%s to %s failed: %s", self.call, self.model, type(error).__name__)
        else:
            return False
        raise AIUnavailable() from None
