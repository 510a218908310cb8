"""bot.core.tokens: OpenAI's real encodings, offline, with the counts OpenAI documents."""

from __future__ import annotations

import gzip
import socket

import pytest

from bot.core import tokens
from bot.core.tokens import count_messages, count_tokens, encoding_name, truncate_tokens


def test_loads_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    # tiktoken fetches its files on first use; ours must never need to.
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the tokenizer tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    tokens._load.cache_clear()
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("hello world", "text-embedding-3-small") == 2


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # The token ids OpenAI's cookbook shows for "tiktoken is great!".
        ("text-embedding-3-small", [83, 1609, 5963, 374, 2294, 0]),
        ("gpt-4o", [83, 8251, 2488, 382, 2212, 0]),
    ],
)
def test_known_token_ids(model: str, expected: list[int]) -> None:
    assert tokens.encoding(model).encode_ordinary("tiktoken is great!") == expected
    assert count_tokens("tiktoken is great!", model) == len(expected)


def test_model_families() -> None:
    assert encoding_name("text-embedding-3-small") == "cl100k_base"
    assert encoding_name("text-embedding-3-large") == "cl100k_base"
    assert encoding_name("gpt-4o-mini") == "o200k_base"
    assert encoding_name("gpt-5.4-mini") == "o200k_base"
    assert encoding_name("some-local-model") == "o200k_base"  # unknown: a current GPT


def test_counts_are_not_characters_over_four() -> None:
    # Technical text runs well over a token per four characters; this is what the old
    # estimate under-held.
    text = "k8s: `kubectl -n kube-system get po -o=jsonpath='{.items[*].spec}'` --> 0x7f3a"
    assert count_tokens(text, "text-embedding-3-small") > len(text) / 4
    assert count_tokens("", "gpt-4o") == 0
    assert count_tokens("<|endoftext|>", "gpt-4o") > 1  # special-token text is just text


def test_messages_cover_the_chat_format() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    content = count_tokens("Be brief.", "gpt-4o") + count_tokens("Hi", "gpt-4o")
    # OpenAI's documented format: 3 per message and 3 priming the reply.
    assert count_messages(messages, "gpt-4o") >= content + 3 * len(messages) + 3


def test_truncate_on_token_boundaries() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20
    cut = truncate_tokens(text, 10, "gpt-4o")
    assert count_tokens(cut, "gpt-4o") == 10 and text.startswith(cut)
    assert truncate_tokens("short", 10, "gpt-4o") == "short"


def test_a_damaged_rank_file_is_refused(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(b"YQ== 0\n"))
    monkeypatch.setattr(tokens, "_FILES", tmp_path)
    tokens._load.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="not OpenAI's cl100k_base"):
            count_tokens("hello", "text-embedding-3-small")
    finally:
        tokens._load.cache_clear()
