"""bot.core.documents.chunking: deterministic, bounded chunks with overlap and the right page numbers,
in linear time even for megabytes of text on one line."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from bot.core.documents.chunking import Chunk, chunk
from bot.core.tokens import count_tokens


def estimate_tokens(text: str) -> int:
    return count_tokens(text, "text-embedding-3-small")


TARGET = 250
OVERLAP = 30
WORDS = ["river", "stone", "orbit", "lantern", "quiet", "meadow", "copper", "signal", "tide"]


def prose(seed: int, paragraphs: int, sentences: int = 6) -> str:
    rng = random.Random(seed)
    out = []
    for _ in range(paragraphs):
        out.append(
            " ".join(
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "."
                for _ in range(rng.randint(1, sentences))
            )
        )
    return "\n\n".join(out)


def assert_well_formed(chunks: list[Chunk], target: int = TARGET) -> None:
    assert chunks, "no chunks"
    for number, c in enumerate(chunks):
        assert c.index == number
        assert c.text and c.text == c.text.strip()
        assert "  " not in c.text and "\n\n" not in c.text and "\t" not in c.text
        assert c.tokens == estimate_tokens(c.text)
        assert c.tokens <= target
    for c in chunks[:-1]:
        assert c.tokens >= target // 3, "chunks should be reasonably full"


def test_empty_input_gives_no_chunks() -> None:
    assert chunk([]) == []
    assert chunk(["", "  \n\n\t ", "\n"]) == []


def test_short_text_is_one_chunk_with_whitespace_normalized() -> None:
    result = chunk(["  Hello\tthere,\r\n  world.  \n\n\n  Second   paragraph.  "])
    assert result == [Chunk(0, 1, "Hello there, world.\nSecond paragraph.", 8)]


def test_is_deterministic() -> None:
    pages = [prose(seed, 12) for seed in range(5)]
    assert chunk(pages) == chunk(list(pages))


def test_chunks_are_within_bounds() -> None:
    chunks = chunk([prose(seed, 15) for seed in range(4)])
    assert len(chunks) > 10
    assert_well_formed(chunks)
    average = sum(c.tokens for c in chunks) / len(chunks)
    assert 150 <= average <= TARGET


def test_other_targets_are_respected() -> None:
    chunks = chunk([prose(1, 30)], target_tokens=100, overlap_tokens=10)
    assert_well_formed(chunks, target=100)


def test_consecutive_chunks_overlap() -> None:
    chunks = chunk([prose(7, 20)])
    assert len(chunks) > 3
    for previous, current in pairwise(chunks):
        words, before = current.text.split(), previous.text.split()
        # The chunk opens with the last words of the previous one (a few, not all).
        shared = next(n for n in range(len(words), 0, -1) if before[-n:] == words[:n])
        assert 3 <= shared < len(before) // 2
        assert estimate_tokens(" ".join(words[:shared])) <= OVERLAP


def test_no_overlap_when_asked() -> None:
    text = prose(3, 20)
    chunks = chunk([text], overlap_tokens=0)
    rebuilt = " ".join(c.text for c in chunks).split()
    assert rebuilt == text.split()  # every word exactly once, in order


def test_no_text_is_lost() -> None:
    text = prose(4, 25)
    chunks = chunk([text])
    # Each chunk's new part (after its overlap) follows the previous chunk in order.
    joined = " ".join(c.text for c in chunks).split()
    original = text.split()
    assert set(joined) == set(original)
    assert joined[-len(chunks[-1].text.split()) :] == original[-len(chunks[-1].text.split()) :]
    assert len(joined) >= len(original)


def test_paragraph_boundaries_are_preferred() -> None:
    # Paragraphs of ~100 tokens: cuts fall between them, never inside.
    paragraphs = [f"Paragraph {n} " + "word " * 75 + f"end{n}." for n in range(12)]
    chunks = chunk(["\n\n".join(paragraphs)], overlap_tokens=0)
    for c in chunks:
        assert c.text.startswith("Paragraph")
        assert c.text.endswith(".")


def test_sentence_boundaries_come_next() -> None:
    # One giant paragraph of sentences: chunks end at a sentence end.
    text = " ".join(f"Sentence number {n} is here and it says little." for n in range(300))
    chunks = chunk([text], overlap_tokens=0)
    assert len(chunks) > 5
    assert all(c.text.endswith(".") for c in chunks)
    assert all(c.text.startswith("Sentence") for c in chunks)


def test_page_numbers_are_where_chunks_start() -> None:
    pages = [prose(10, 8), "", prose(11, 1, sentences=1), prose(12, 8)]
    chunks = chunk(pages)
    assert_well_formed(chunks)
    assert chunks[0].page == 1
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)
    assert 2 not in {c.page for c in chunks}  # the blank page has no chunk
    assert chunks[-1].page == 4
    for c in chunks:
        # The new text of each chunk (its last word) is on its page or a later one.
        first_new_word = c.text.split()[-1]
        assert any(first_new_word in page for page in pages[c.page - 1 :])


def test_each_page_short_starts_its_own_page_number() -> None:
    pages = [f"Page {n} text." for n in range(1, 6)]
    chunks = chunk(pages)
    assert len(chunks) == 1 and chunks[0].page == 1
    chunks = chunk(["", "", "Only page three."])
    assert [c.page for c in chunks] == [3]


def test_two_megabyte_single_line_chunks_quickly() -> None:
    rng = random.Random(5)
    line = " ".join(rng.choice(WORDS) for _ in range(330_000))
    assert len(line) > 2_000_000 and "\n" not in line
    chunks = chunk([line])
    assert_well_formed(chunks)
    # About 220 tokens of new text each (250 less the overlap): chunks of nearly full size.
    total = estimate_tokens(line)
    assert total / TARGET <= len(chunks) <= total / 200
    assert all(c.tokens >= 200 for c in chunks[:-1])


def test_text_without_spaces_is_cut_mid_word() -> None:
    chunks = chunk(["x" * 2_000_000])
    assert_well_formed(chunks)
    total = estimate_tokens("x" * 2_000_000)
    assert total / TARGET <= len(chunks) <= total / 180


def test_non_latin_scripts_stay_within_bounds() -> None:
    chunks = chunk(["日本語の文章です。" * 20_000, "слово " * 30_000])
    assert_well_formed(chunks)
    assert chunks[-1].page == 2


@pytest.mark.parametrize(("target", "overlap"), [(10, 0), (100, 60), (100, -1)])
def test_bad_parameters_are_programming_errors(target: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        chunk(["text"], target_tokens=target, overlap_tokens=overlap)
