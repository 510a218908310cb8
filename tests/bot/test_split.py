"""Long answers split under 2,000 characters without breaking code blocks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.front.replies import MESSAGE_LIMIT, split_message


def _balanced(part: str) -> bool:
    return sum(1 for line in part.splitlines() if line.lstrip().startswith("```")) % 2 == 0


def test_short_text_is_one_part() -> None:
    assert split_message("hello") == ["hello"]


def test_code_block_cut_is_closed_and_reopened() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```"
    text = "Here is the code:\n" + code + "\nDone."
    parts = split_message(text)
    assert len(parts) > 1
    for part in parts:
        assert len(part) < MESSAGE_LIMIT
        assert _balanced(part)
    assert parts[1].startswith("```python")
    rejoined = "".join(p.removesuffix("\n```").removeprefix("```python\n") for p in parts)
    assert all(f"print({i})" in rejoined for i in range(400))


def test_one_huge_line_is_wrapped() -> None:
    parts = split_message("x" * 5000)
    assert all(len(p) < MESSAGE_LIMIT for p in parts)
    assert "".join(parts) == "x" * 5000


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(
                alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="`\r"),
                max_size=300,
            ),
            st.sampled_from(["```", "```js", "```python"]),
        ),
        max_size=60,
    )
)
def test_parts_are_short_and_fenced(lines: list[str]) -> None:
    text = "\n".join(lines)
    parts = split_message(text)
    for part in parts:
        assert len(part) < MESSAGE_LIMIT
    if _balanced(text):
        assert all(_balanced(p) for p in parts)
