"""A fake OpenAI server on 127.0.0.1 that speaks the real HTTP API (images, chat,
embeddings), so the real `openai` client is exercised end to end.

It reports usage figures counted with the real tokenizers (bot.core.tokens, the same
encodings OpenAI bills with), so a hold too small for the real cost shows in the tests;
it counts and records every request, and can be told to fail (500, 429, timeout, content-policy 400, malformed JSON), to add latency, or
to fail at random with a seed. A chat request with `stream: true` is answered with
server-sent events, one word a chunk (`chunk_delay` apart), ending with a usage chunk
when `stream_options.include_usage` is set; `cut_stream` and `stall_stream` break the
next stream after N content chunks. Embeddings are hashed bag-of-words vectors, so texts
that share words are close: retrieval becomes testable.

As a pytest plugin it provides the `fake_openai` fixture; as a script
(`python -m tests.fakes.openai_server --port 0`) it prints its base URL on the first
line of standard output and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import hashlib
import io
import json
import random
import re
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from bot.core.tokens import REPLY_PRIMING, count_tokens, truncate_tokens

ENDPOINTS = {
    "/v1/images/generations": "images",
    "/v1/chat/completions": "chat",
    "/v1/embeddings": "embeddings",
}
FAILURES = {
    "500",
    "429",
    "timeout",
    "content_policy",
    "moderation_blocked",
    "malformed",
    "missing_fields",
    "401",  # a wrong key
    "403",  # a key without access to the model
    "404",  # an unknown model
}
MISSING = object()  # in usage_override: leave the field out
_WORD = re.compile(r"\w+")
_PIECE = re.compile(r"\S+\s*|\s+")
IMAGE_TOKENS = 85  # what the fake charges per image part of a chat message


def real_tokens(text: str, model: str) -> int:
    """What the real API counts for `text` as input to `model`."""
    return count_tokens(text, model)


@functools.lru_cache(maxsize=65_536)
def _word_hash(word: str) -> int:
    # Cached: a document repeats its words, and the fake's own time is not what the
    # benchmarks measure (the real API's time is latency, which they set to zero).
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def bag_of_words(text: str, dimensions: int) -> np.ndarray:
    buckets = [_word_hash(word) % dimensions for word in _WORD.findall(text.lower())]
    vector = np.bincount(buckets, minlength=dimensions).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if norm == 0:
        vector[0] = 1.0
        return vector
    return vector / norm


def _png() -> bytes:
    image = Image.new("RGB", (1024, 1024), (30, 40, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((262, 262, 762, 762), fill=(240, 200, 60))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@dataclass
class Recorded:
    endpoint: str
    body: dict[str, Any]
    usage: dict[str, int] = field(default_factory=dict)
    failed: str | None = None
    at: float = 0.0
    chunks_sent: int = 0  # content chunks of a streamed answer written so far
    streamed: str = ""  # the text of those chunks


class FakeOpenAI:
    def __init__(self, *, dimensions: int = 1536, seed: int = 0) -> None:
        self.dimensions = dimensions
        self.requests: list[Recorded] = []
        self.latency = 0.0
        self.failure_rate = 0.0
        self.random = random.Random(seed)
        self.chat_answer: str | Callable[[list[dict[str, Any]]], str] = "I am a fake agent."
        self._planned: dict[str, deque[str]] = {name: deque() for name in ENDPOINTS.values()}
        self._numbered: dict[tuple[str, int], str] = {}
        self._release = asyncio.Event()
        self.chunk_delay = 0.0  # seconds between two chunks of a streamed answer
        self.omit_stream_usage = False  # act as a server that ignores stream_options
        # Sent as is in place of the first content chunk (a hostile server's JSON).
        self.odd_chunk: Any = None
        self._stream_faults: deque[tuple[str, int]] = deque()
        # Set whenever a streamed chunk is written: tests wait on it, never on time.
        self.chunk_written = asyncio.Event()
        self._png = _png()
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.in_flight = 0
        self.max_in_flight = 0
        # Optional: called with ("received" | "completed", record) when a request has
        # arrived and when its successful answer is built (not yet sent), so that a test
        # can act at that very moment (the crash suite kills its child there).
        self.hook: Callable[[str, Recorded], None] | None = None
        # Endpoints whose requests wait, once received, until their event is set.
        self._gates: dict[str, asyncio.Event] = {}
        self._arrival = asyncio.Event()
        # A misbehaving server: usage fields replaced in chat and embedding answers (the
        # value MISSING removes the field), answers past max_completion_tokens, and JSON
        # bodies sent a byte every `trickle` seconds.
        self.usage_override: dict[str, Any] = {}
        self.ignore_cap = False
        self.trickle = 0.0

    # ---- what tests tell it -----------------------------------------------------------

    def fail_next(self, endpoint: str, kind: str, times: int = 1) -> None:
        assert endpoint in self._planned and kind in FAILURES, (endpoint, kind)
        self._planned[endpoint].extend([kind] * times)

    def fail_request(self, endpoint: str, number: int, kind: str) -> None:
        """Fail the `number`-th request (1-based, counted from now on) of an endpoint."""
        assert endpoint in self._planned and kind in FAILURES, (endpoint, kind)
        self._numbered[(endpoint, self.count(endpoint) + number)] = kind

    def gate(self, endpoint: str) -> asyncio.Event:
        """Hold every request of `endpoint`, once received, until the returned event is
        set; then it is answered as usual. Lets a test act while a call is in flight."""
        assert endpoint in self._planned, endpoint
        gate = self._gates[endpoint] = asyncio.Event()
        return gate

    async def received(self, endpoint: str, count: int = 1) -> None:
        """Wait until `count` requests of `endpoint` have arrived, counted from the start."""
        while self.count(endpoint) < count:
            self._arrival.clear()
            await self._arrival.wait()

    def cut_stream(self, after: int) -> None:
        """Abort the next streamed answer's connection after `after` content chunks."""
        self._stream_faults.append(("cut", after))

    def stall_stream(self, after: int) -> None:
        """Hold the next streamed answer after `after` content chunks until `release`."""
        self._stream_faults.append(("stall", after))

    def release(self) -> None:
        """Let requests held by a "timeout" failure go (the client has given up by then)."""
        self._release.set()

    # ---- what tests read --------------------------------------------------------------

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r.endpoint == endpoint)

    def completed(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint and r.failed is None]

    def reported_tokens(self, endpoint: str) -> int:
        """The total_tokens of every successful answer of an endpoint."""
        return sum(r.usage.get("total_tokens", 0) for r in self.completed(endpoint))

    def counts(self) -> Counter[str]:
        return Counter(r.endpoint for r in self.requests)

    # ---- serving -------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path in ENDPOINTS:
            app.router.add_post(path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{bound}/v1"
        return self.base_url

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        endpoint = ENDPOINTS[request.path]
        body = await request.json()
        record = Recorded(endpoint, body, at=time.monotonic())
        self.requests.append(record)
        self._arrival.set()
        number = self.count(endpoint)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hook is not None:
                self.hook("received", record)
            if self.latency:
                await asyncio.sleep(self.latency)
            if endpoint in self._gates:
                await self._gates[endpoint].wait()
            failure = self._numbered.pop((endpoint, number), None)
            if failure is None and self._planned[endpoint]:
                failure = self._planned[endpoint].popleft()
            if failure is None and self.failure_rate and self.random.random() < self.failure_rate:
                failure = "500"
            if failure is not None:
                record.failed = failure
                return await self._fail(failure)
            payload = getattr(self, f"_{endpoint}")(body, record)
            if self.usage_override and "usage" in payload and endpoint != "images":
                for name, value in self.usage_override.items():
                    payload["usage"].pop(name, None)
                    if value is not MISSING:
                        payload["usage"][name] = value
                record.usage = dict(payload["usage"])
            if self.hook is not None:
                self.hook("completed", record)
            if endpoint == "chat" and body.get("stream"):
                return await self._stream(request, body, payload, record)
            if endpoint == "chat" and self.chunk_delay:
                # Unstreamed, the answer comes when all of it is written: the same time.
                text = payload["choices"][0]["message"]["content"]
                await asyncio.sleep(self.chunk_delay * len(_PIECE.findall(text)))
            if self.trickle:
                return await self._trickled(request, payload)
            return web.json_response(payload)
        finally:
            self.in_flight -= 1

    async def _trickled(self, request: web.Request, payload: dict[str, Any]) -> web.StreamResponse:
        data = json.dumps(payload).encode()
        response = web.StreamResponse(
            headers={"Content-Type": "application/json", "Content-Length": str(len(data))}
        )
        await response.prepare(request)
        try:
            for index in range(len(data)):
                await response.write(data[index : index + 1])
                await asyncio.sleep(self.trickle)
        except (ConnectionResetError, ConnectionError):
            pass  # the client gave up: what the deadline is for
        return response

    async def _fail(self, kind: str) -> web.StreamResponse:
        if kind == "timeout":
            await self._release.wait()
            return web.json_response(
                {"error": {"message": "late", "type": "server_error"}}, status=500
            )
        if kind == "malformed":
            return web.Response(text="{this is not json", content_type="application/json")
        if kind == "missing_fields":
            return web.json_response({"object": "nothing useful"})
        if kind in {"content_policy", "moderation_blocked"}:
            code = "content_policy_violation" if kind == "content_policy" else "moderation_blocked"
            error = {
                "message": "Your request was rejected by the safety system.",
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
            return web.json_response({"error": error}, status=400)
        status = int(kind)
        error = {"message": "fake failure", "type": "server_error", "param": None, "code": None}
        return web.json_response({"error": error}, status=status)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], payload: dict[str, Any], record: Recorded
    ) -> web.StreamResponse:
        """The answer as the API streams it: a role chunk, one chunk per word, a finish
        chunk, the usage chunk (asked for with stream_options.include_usage), [DONE]."""
        fault = self._stream_faults.popleft() if self._stream_faults else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head = {k: payload[k] for k in ("id", "created", "model")}
        head["object"] = "chat.completion.chunk"

        # Asked for, the API puts "usage": null on every chunk but the last one.
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        with_usage = with_usage and not self.omit_stream_usage

        async def event(choices: list[dict[str, Any]], usage: Any = None) -> None:
            chunk = {**head, "choices": choices}
            if usage is not None or with_usage:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def delta(content: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
            return [{"index": 0, "delta": content, "finish_reason": finish, "logprobs": None}]

        text = payload["choices"][0]["message"]["content"]
        try:
            await event(delta({"role": "assistant", "content": ""}))
            for piece in _PIECE.findall(text):
                if fault is not None and record.chunks_sent >= fault[1]:
                    break
                # Always yield: a real server's chunks come over time, and writing a whole
                # answer in one step would stall the loop this fake shares with the bot.
                await asyncio.sleep(self.chunk_delay)
                if self.odd_chunk is not None and record.chunks_sent == 0:
                    # Sent in the piece's place: what was streamed holds only real pieces.
                    await response.write(f"data: {json.dumps(self.odd_chunk)}\n\n".encode())
                else:
                    await event(delta({"content": piece}))
                    record.streamed += piece
                record.chunks_sent += 1
                self.chunk_written.set()
        except ConnectionResetError:  # the client went away (a cancelled answer)
            record.failed = "client gone"
            return response
        if fault is not None:
            record.failed = f"stream {fault[0]} after {fault[1]}"
            if fault[0] == "stall":
                await self._release.wait()
            if request.transport is not None:  # (a stalled client may have gone already)
                request.transport.abort()  # no finish, no usage, no [DONE]: a broken stream
            return response
        await event(delta({}, "stop"))
        if with_usage:
            await event([], payload["usage"])
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _images(self, body: dict[str, Any], record: Recorded) -> dict[str, Any]:
        prompt_tokens = real_tokens(str(body.get("prompt", "")), str(body.get("model", "")))
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": prompt_tokens},
            "output_tokens": 1056,
            "total_tokens": prompt_tokens + 1056,
        }
        record.usage = {"total_tokens": usage["total_tokens"]}
        return {
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(self._png).decode()}],
            "output_format": "png",
            "usage": usage,
        }

    def _chat(self, body: dict[str, Any], record: Recorded) -> dict[str, Any]:
        messages = body.get("messages", [])
        answer = self.chat_answer(messages) if callable(self.chat_answer) else self.chat_answer
        cap = int(body.get("max_completion_tokens") or 4096)
        model = str(body.get("model", ""))
        # The real API stops at the cap; its format costs 3 tokens a message and 3 more
        # priming the reply (OpenAI's published figures).
        if not self.ignore_cap:
            answer = truncate_tokens(answer, cap, model)
        prompt = (
            sum(_content_tokens(m.get("content", ""), model) + 3 for m in messages) + REPLY_PRIMING
        )
        completion = real_tokens(answer, model)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        record.usage = dict(usage)
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": answer, "refusal": None},
                }
            ],
            "usage": usage,
        }

    def _embeddings(self, body: dict[str, Any], record: Recorded) -> dict[str, Any]:
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = bag_of_words(str(text), self.dimensions)
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if as_base64
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(real_tokens(str(t), str(body.get("model", ""))) for t in inputs)
        record.usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {
            "object": "list",
            "data": data,
            "model": body.get("model", "fake"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _content_tokens(content: Any, model: str) -> int:
    """A message's content is text, or a list of text and image parts (vision)."""
    if not isinstance(content, list):
        return real_tokens(str(content), model)
    return sum(
        IMAGE_TOKENS
        if part.get("type") == "image_url"
        else real_tokens(str(part.get("text", "")), model)
        for part in content
    )


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


async def _serve(port: int, latency: float, failure_rate: float, seed: int) -> None:
    fake = FakeOpenAI(seed=seed)
    fake.latency = latency
    fake.failure_rate = failure_rate
    print(await fake.start(port), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.latency, args.failure_rate, args.seed))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
