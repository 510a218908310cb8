"""Token counts with OpenAI's own tokenizers, offline.

Promises:
- `count_tokens(text, model)` is the number of tokens the model's encoding gives `text`:
  o200k_base for current GPT models, cl100k_base for text-embedding-3-* (and older GPT-4 /
  3.5 models), as tiktoken maps them; a model tiktoken does not know gets o200k_base.
- `count_messages(messages, model)` is never below what Chat Completions reports as the
  prompt's tokens for those messages: each message's content plus the chat format's own
  tokens around it, plus the tokens that prime the reply.
- Nothing is downloaded: the encodings' rank files ship in `bot/core/encodings/` (the very
  files OpenAI publishes, gzipped; their SHA-256 is checked against tiktoken's own
  expected hashes before use). tiktoken itself would fetch them on first use, which fails
  on a machine without internet.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from unittest import mock

import tiktoken
from tiktoken_ext import openai_public

__all__ = [
    "MESSAGE_OVERHEAD",
    "REPLY_PRIMING",
    "count_messages",
    "count_tokens",
    "encoding",
    "encoding_name",
    "truncate_tokens",
]

# The chat format wraps each message in a few tokens of its own (role, separators) and
# primes the reply with three more. OpenAI's published figure is 3 per message; 4 keeps a
# `name` field or a future format change on the safe side.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3

DEFAULT_ENCODING = "o200k_base"
_FILES = Path(__file__).with_name("encodings")
# The SHA-256 of each uncompressed rank file, as tiktoken_ext.openai_public expects it.
_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
_lock = threading.Lock()


def encoding_name(model: str) -> str:
    """The encoding of `model`; unknown models are taken for current GPT models."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING
    return name if name in _SHA256 else DEFAULT_ENCODING


def encoding(model: str) -> tiktoken.Encoding:
    return _load(encoding_name(model))


def count_tokens(text: str, model: str) -> int:
    """The tokens `text` costs as input to `model` (special-token text counts as text)."""
    if not text:
        return 0
    return len(encoding(model).encode_ordinary(text))


def count_messages(messages: Iterable[Mapping[str, object]], model: str) -> int:
    """A Chat Completions prompt's tokens, never below what the API reports for it."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + count_tokens(str(message.get("content") or ""), model)
    return total


def truncate_tokens(text: str, limit: int, model: str) -> str:
    """The longest prefix of `text` that is at most `limit` tokens (on token boundaries)."""
    enc = encoding(model)
    tokens = enc.encode_ordinary(text)
    if len(tokens) <= limit:
        return text
    return enc.decode(tokens[: max(0, limit)])


@functools.cache
def _load(name: str) -> tiktoken.Encoding:
    with _lock:
        data = gzip.decompress((_FILES / f"{name}.tiktoken.gz").read_bytes())
        if hashlib.sha256(data).hexdigest() != _SHA256[name]:
            raise RuntimeError(f"{_FILES / name}.tiktoken.gz is not OpenAI's {name} file")
        ranks = {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in data.splitlines() if line)
        }
        # tiktoken's own constructor holds the split pattern and the special tokens; only
        # its loader (which downloads) is replaced by the ranks read above.
        with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *_, **__: ranks):
            spec = getattr(openai_public, name)()
        return tiktoken.Encoding(**spec)
