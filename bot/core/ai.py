"""The AI gateway: one `AsyncOpenAI` client behind three calls (image, chat, embeddings),
each returning its result with the API's own usage figures. Chat can also stream: each
piece of text goes to a callback as it arrives, and the usage comes from the stream's
usage chunk (asked for with `stream_options.include_usage`).

Errors become domain errors: a content-policy refusal is `ContentRejected`; rate limits,
5xx, timeouts, connection errors and answers we cannot use are `AIUnavailable`. No raw
exception text ever reaches a member; the operator sees the status in the log, never
the key.

An OpenAI-compatible server is not trusted further than it must be: usage figures must be
present, whole and non-negative (else `AIUnusable`: the call failed, nothing is charged);
an answer is cut at the completion cap, whatever the server sent; and each call, retries
and streaming included, ends by `deadline_seconds` of wall clock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from bot.config import OpenAISettings
from bot.core.tokens import count_tokens, truncate_tokens
from bot.errors import AIMisconfigured, AIUnavailable, AIUnusable, ContentRejected
from bot.logs import Throttle

log = logging.getLogger(__name__)

_CHAT_PATH = "/chat/completions"
# What `chat.completions.create` asks of each request: the API key as a bearer token.
_AUTH: openai.RequestOptions = {"security": {"bearer_auth": True}}
_POLICY_CODES = {"content_policy_violation", "moderation_blocked"}
# Without a key the SDK refuses to start; a local OpenAI-compatible server ignores it.
_PLACEHOLDER_KEY = "not-needed-for-a-local-server"
# No real token is longer than this many characters: a piece is cut to its budget times
# this before it is counted, so a flood costs the tokenizer no more than a normal answer.
_MAX_TOKEN_CHARS = 32
# No call uses more tokens than this (a million-token context, a hundred times over): a
# larger figure is a server's error, and charged it would empty any account.
_MAX_USAGE = 100_000_000


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
        self._strict = strict
        # Compact base64, decoded here straight into float32 arrays: left to the SDK it
        # becomes lists of Python floats (which we would turn back into arrays), a third
        # of a document upload's time. Strict validation checks the answer as floats
        # before anything decodes it, so strict mode (the tests') asks for floats.
        self._embedding_format = "float" if strict else "base64"

    async def close(self) -> None:
        await self.client.close()

    @contextlib.asynccontextmanager
    async def _calling(self, call: str, model: str) -> AsyncIterator[None]:
        """Errors mapped, within the call's total deadline (the SDK's timeout bounds each
        read, not the call)."""
        try:
            async with asyncio.timeout(self.settings.deadline_seconds):
                with _mapped(call, model):
                    yield
        except TimeoutError:
            log.warning(
                "%s to %s passed its %gs deadline", call, model, self.settings.deadline_seconds
            )
            raise AIUnavailable() from None

    async def image(self, prompt: str) -> ImageResult:
        model = self.settings.image_model
        async with self._calling("image", model):
            answer = await self.client.images.generate(
                model=model,
                prompt=prompt,
                n=1,
                size=self.settings.image_size,
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
        log.debug("image from %s: %d bytes, usage %s tokens", model, len(png), total)
        return ImageResult(png, model, total)

    async def chat(
        self,
        messages: list[dict[str, Any]],
        max_completion_tokens: int | None = None,
        *,
        model: str | None = None,
    ) -> ChatResult:
        model = model or self.settings.chat_model
        cap = max_completion_tokens or self.settings.max_completion_tokens
        async with self._calling("chat", model):
            answer = await self.client.post(
                _CHAT_PATH,
                cast_to=ChatCompletion,
                body=_chat_body(model, messages, cap),
                options=_AUTH,
            )
        if not answer.choices or answer.usage is None:
            log.error("the chat API answered without choices or usage (model %s)", model)
            raise AIUnusable()
        message = answer.choices[0].message
        text = _Capped(cap, model).take(message.content or message.refusal or "")
        return _chat_result("chat", text, model, answer.usage)

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
        cap = max_completion_tokens or self.settings.max_completion_tokens
        capped = _Capped(cap, model)
        pieces: list[str] = []
        usage = None
        async with self._calling("chat stream", model):
            body = _chat_body(model, messages, cap)
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            stream = await self.client.post(
                _CHAT_PATH,
                cast_to=ChatCompletion,
                body=body,
                options=_AUTH,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            try:
                async for chunk in stream:
                    text, chunk_usage = self._read_chunk(chunk)
                    if chunk_usage is not None:
                        usage = chunk_usage
                    # Past the cap, pieces are read (the usage chunk comes last) but dropped.
                    piece = capped.take(text)
                    if piece:
                        pieces.append(piece)
                        await on_text(piece)
                    # Chunks already buffered are read without waiting: without this, one
                    # stream runs to its end in a single step of the loop, and dozens at
                    # once stall every other task for seconds (the load suite's 4.6 s).
                    await asyncio.sleep(0)
            finally:
                await stream.close()
        if usage is None:
            log.error("the chat stream of %s ended without its usage chunk", model)
            raise AIUnavailable()
        return _chat_result("chat stream", "".join(pieces), model, usage)

    def _read_chunk(self, chunk: object) -> tuple[str, dict[str, Any] | None]:
        """The text of a streamed chunk's first choice and its usage, from the JSON as
        sent. Not built into the SDK's models: building ChatCompletionChunk objects was
        a fifth of a streamed chat's CPU, for the two fields read here. Strict mode (the
        tests') validates each chunk against the model first, as the SDK would."""
        if self._strict:
            try:
                ChatCompletionChunk.model_validate(chunk)
            except pydantic.ValidationError:
                raise _Unusable("a chunk that is not a ChatCompletionChunk") from None
        if not isinstance(chunk, dict):
            raise _Unusable("a chunk that is not an object")
        usage = chunk.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise _Unusable("usage that is not an object")
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise _Unusable("choices that are not a list")
        if not choices:
            return "", usage
        delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
        if not isinstance(delta, dict):
            raise _Unusable("a choice without a delta object")
        text = delta.get("content") or delta.get("refusal") or ""
        if not isinstance(text, str):
            raise _Unusable("text that is not a string")
        return text, usage

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        model = self.settings.embedding_model
        async with self._calling("embeddings", model):
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
        (total,) = _usage("embeddings", model, answer.usage, "total_tokens")
        log.debug("embeddings from %s: %d inputs, %d tokens", model, len(texts), total)
        return EmbeddingResult(vectors, model, total)


def _chat_body(model: str, messages: list[dict[str, Any]], cap: int) -> dict[str, Any]:
    """The JSON body of a chat request, built as plain dicts. `chat.completions.create`
    would walk every message against the SDK's typed parameters (a transform that renames
    aliased keys and encodes files, neither of which our messages have): 0.12 ms a
    message, most of a chat's CPU with a long history. The request is otherwise the
    SDK's own: `client.post` is what `create` calls, with the same auth, retries,
    timeouts and response types (tests/bot/test_ai.py checks the bodies are equal)."""
    return {"model": model, "messages": messages, "max_completion_tokens": cap}


def _usage(call: str, model: str, usage: object, *fields: str) -> tuple[int, ...]:
    """The usage figures, each present, a whole number, not negative and not absurd; else
    AIUnusable: what the call cost is unknowable, so it counts as failed, charging nothing."""
    if isinstance(usage, dict):  # a streamed chunk's usage, read as sent
        values = tuple(usage.get(name) for name in fields)
    else:
        values = tuple(getattr(usage, name, None) for name in fields)
    if any(type(value) is not int or not 0 <= value <= _MAX_USAGE for value in values):
        shown = {name: repr(value)[:40] for name, value in zip(fields, values, strict=True)}
        log.error("%s from %s reported unusable usage %s", call, model, shown)
        raise AIUnusable()
    return values  # type: ignore[return-value]


def _chat_result(call: str, text: str, model: str, usage: object) -> ChatResult:
    prompt, completion, total = _usage(
        call, model, usage, "prompt_tokens", "completion_tokens", "total_tokens"
    )
    log.debug("%s from %s: %d prompt + %d completion tokens", call, model, prompt, completion)
    # A total below its parts would under-charge: the parts are what the model did.
    return ChatResult(text, model, prompt, completion, max(total, prompt + completion))


class _Capped:
    """An answer cut at the completion cap (in the model's tokens), piece by piece: a
    server that ignores max_completion_tokens cannot flood a thread or the history."""

    def __init__(self, cap: int, model: str) -> None:
        self.left = cap
        self.model = model

    def take(self, piece: str) -> str:
        if not piece or self.left <= 0:
            return ""
        piece = piece[: self.left * _MAX_TOKEN_CHARS]
        tokens = count_tokens(piece, self.model)
        if tokens <= self.left:
            self.left -= tokens
            return piece
        kept = truncate_tokens(piece, self.left, self.model)
        self.left = 0
        return kept


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


# Which setting names the model of each call, for the operator's line.
_MODEL_SETTING = {"image": "image_model", "chat": "chat_model", "chat stream": "chat_model"}
# A misconfiguration is said at ERROR once an hour per kind, not once per member's call.
_MISCONFIGURED = Throttle(3600.0)


def _misconfigured(call: str, model: str, error: openai.APIStatusError) -> AIMisconfigured:
    setting = "openai." + _MODEL_SETTING.get(call, "embedding_model")
    if isinstance(error, openai.AuthenticationError):
        kind, fix = "auth", "the API refused OPENAI_API_KEY (401): set a valid key"
    elif isinstance(error, openai.PermissionDeniedError):
        kind = "permission"
        fix = f"the API key may not use {model} (403): check the key's project and model access"
    else:
        kind = f"model {model}"
        fix = f"the API has no model {model} (404): check {setting} and openai.base_url"
    held = _MISCONFIGURED.allow(kind)
    if held is not None:
        more = f" ({held} more since the last line)" if held else ""
        log.error("AI service misconfigured: %s; members are told so%s", fix, more)
    return AIMisconfigured()


class _Unusable(Exception):
    """A streamed chunk not of the API's shape: the answer cannot be used."""


class _mapped:
    """Turns the SDK's exceptions into domain errors, logging what an operator needs."""

    def __init__(self, call: str, model: str) -> None:
        self.call = call
        self.model = model

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> Literal[False]:
        if error is None or not isinstance(error, Exception):
            return False
        if isinstance(error, openai.BadRequestError) and error.code in _POLICY_CODES:
            log.info("%s refused by content policy (%s)", self.call, error.code)
            raise ContentRejected() from None
        if isinstance(
            error,
            openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError,
        ):
            raise _misconfigured(self.call, self.model, error) from None
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
        elif isinstance(
            error, openai.APIResponseValidationError | json.JSONDecodeError | KeyError | _Unusable
        ):
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
