"""The hostile input corpus through the real commands (/docs upload, /avatar upload,
/agent create and edit, /chat). One bot, ledger and fake OpenAI server serve the whole
module (as in production, each input must leave them fit for the next), and each test
acts in a server of its own, so its account starts empty.

For every refused input: one clear sentence (no traceback, no "something went wrong"),
no charge (balance and token_usage unchanged, the fake saw no request), nothing stored
(no document, chunk, agent, avatar or file), no mention pinged; for every accepted one:
the exact charge and what was stored. After each, /tokens still answers.

The corpus is in tests/data/hostile/ (small files) and tests/hostile.py (large ones,
built once per session into a temporary folder). `pytest tests/bot/test_hostile.py -v`
lists every input by name; the heaviest run with --slow.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

import bot.core.documents.extract
from bot.config import Config, LimitsSettings, OpenAISettings, StorageSettings
from bot.core.agents import _NAME, NAME_MAX
from bot.core.ai import AIGateway
from bot.core.metering import Actor
from bot.errors import InvalidInput
from bot.front.app import AgentBot
from bot.front.standin import CommandRunner, Sent, StandInAttachment, UsageError
from bot.services import Services
from tests.bot.conftest import GUILD, OWNER
from tests.bot.helpers import assert_mentions_disabled, on_virtual_time, text
from tests.fakes.openai_server import FakeOpenAI
from tests.hostile import DATA, LARGE, SMALL, long_text, write_large

# The async tests and fixtures run in the module's event loop, where the shared bot lives.
in_module_loop = pytest.mark.asyncio(loop_scope="module")
module_fixture = pytest_asyncio.fixture(scope="module", loop_scope="module")
per_test_fixture = pytest_asyncio.fixture(loop_scope="module")
LIVE_MENTION = ("@everyone", "@here", "<@", "<#")
# What a member must never read: our internals, or a shrug instead of a reason.
NOT_A_SENTENCE = ("Traceback", "Something went wrong", "Exception", "Error:", "pypdf", "PIL")


# --- the corpus ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    name: str  # a file in tests/data/hostile, or a key of tests.hostile.LARGE
    expect: str  # "accepted", "refused", or "insufficient" (refused by the ledger)
    says: str = ""  # a fragment of the answer
    upload_as: str | None = None  # the attachment's file name, if not `name`
    text_limit: int | None = None  # a lowered MAX_PDF_TEXT_CHARS, to keep a bomb quick
    deadline: float | None = None  # a lowered extraction deadline, for a bomb that meets it
    memory_mb: int | None = None  # a lowered worker memory bound, for a bomb that meets it


def item(
    name: str,
    expect: str,
    says: str = "",
    *,
    slow: bool = False,
    suffix: str = "",
    label: str | None = None,
    **more: Any,
) -> pytest.ParameterSet:
    """One input as a test case; its id is the file name (readable, ASCII) unless given."""
    return pytest.param(
        Item(name, expect, says, **more),
        id=(label or more.get("upload_as") or name) + suffix,
        marks=[pytest.mark.slow] if slow else [],
    )


DAMAGED_PDF = "damaged or incomplete"
NOT_SUPPORTED = "not a supported document"
SAVE_AS_UTF8 = "save it as UTF-8"
TOO_MUCH = "more content than one document"
TOO_COMPLEX = "took too long or too much memory"
EXTRACTION_DEADLINE = 10.0
BOMB = "40 megapixels"
IMAGE_TYPES = "PNG, JPEG, WEBP or GIF"

DOCUMENTS = [
    # PDFs: damaged, locked, empty, nested, huge, bombs
    item("truncated.pdf", "refused", DAMAGED_PDF),
    item("encrypted_user_password.pdf", "refused", "password-protected"),
    item("encrypted_no_user_password.pdf", "accepted"),  # every reader opens it
    item("zero_byte.pdf", "refused", "empty"),
    item("header_only.pdf", "refused", DAMAGED_PDF),
    item("garbage_after_header.pdf", "refused", DAMAGED_PDF),
    item("cyclic_page_tree.pdf", "accepted"),  # PDFium reads the pages the cycle reaches
    item("count_lie.pdf", "accepted"),  # /Count says a billion; the tree holds one page
    item("no_pages.pdf", "refused", DAMAGED_PDF),
    item("scanned.pdf", "refused", "OCR"),
    item("pages_5000.pdf", "refused", "5,000 pages; documents can have at most 300 pages"),
    item("same_page_5000_times.pdf", "refused", "5,000 pages"),
    item("deep_page_tree_5000.pdf", "refused", DAMAGED_PDF),
    item("nested_arrays_50000.pdf", "accepted"),  # PDFium skips the junk key's value
    item("nested_dicts_50000.pdf", "refused"),  # pypdf drops the page's text: "no text"
    item("one_line_200kb.pdf", "accepted"),
    item("one_line_2mb.pdf", "accepted"),  # PDFium reads what the page shows (as pdftotext)
    # 40 MB of operators a page (12 GB to draw in all): it meets the deadline, whatever it is.
    item("content_bomb.pdf", "refused", TOO_COMPLEX, deadline=2.0),
    item("cmap_bomb.pdf", "accepted"),  # PDFium parses the font's CMap once, not per page
    item("shared_text_bomb.pdf", "refused", TOO_MUCH, text_limit=1_000_000, suffix="-limit-1M"),
    # Gigabytes to draw: RLIMIT_AS ends it (at 256 MB, four times sooner than at 1 GB).
    item("form_bomb.pdf", "refused", TOO_COMPLEX, memory_mb=256, suffix="-memory"),
    item("shared_text_bomb.pdf", "refused", TOO_MUCH, slow=True, suffix="-real-limits"),
    item("form_bomb.pdf", "refused", TOO_COMPLEX, slow=True, suffix="-real-limits"),
    item("png_renamed.txt", "refused", "an image", upload_as="picture.pdf"),
    # texts: encodings, binaries in disguise, nothing visible, megabytes of one line
    item("utf16le_bom.txt", "accepted"),
    item("utf16be_bom.txt", "accepted"),
    item("utf32_bom.txt", "accepted"),
    item("utf16le_no_bom.txt", "accepted"),
    item("utf16be_no_bom.txt", "accepted"),
    item("latin1.txt", "accepted"),
    item("cp1252_quotes.txt", "refused", SAVE_AS_UTF8),  # 7 non-ASCII bytes: too few to tell
    item("shift_jis.txt", "accepted"),  # charset-normalizer places them; see test_encodings
    item("euc_jp.txt", "accepted"),
    item("gbk.txt", "accepted"),
    item("big5.txt", "refused", SAVE_AS_UTF8),
    item("nul_bytes.txt", "refused", NOT_SUPPORTED),
    item("png_renamed.txt", "refused", "an image"),
    item("elf_renamed.txt", "refused", "a program"),
    item("zero_width_only.txt", "refused", "no text"),
    item("bom_only.txt", "refused", "no text"),
    item("whitespace_only.md", "refused", "no text"),
    item("mentions_and_rtl.md", "accepted"),
    item("one_line_9mb.txt", "insufficient", "Insufficient Tokens"),
    item("over_limit_10mb.txt", "refused", "at most 10 MB"),
    # hostile file names on a good file: learned, and the stored name is defused
    item(
        "latin1.txt",
        "accepted",
        upload_as="@everyone <@&456> <@123> <#789>.txt",
        label="name-with-mentions.txt",
    ),
    item(
        "latin1.txt",
        "accepted",
        upload_as="**bold** `code` [x](https://evil.example).md",
        label="name-with-markdown.md",
    ),
    item(
        "latin1.txt",
        "accepted",
        upload_as="invoice\u202etxt.exe\u200b\u2060.txt",
        label="name-with-rtl-override-and-zero-width.txt",
    ),
    item(
        "latin1.txt",
        "accepted",
        upload_as=long_text(10_000) + ".txt",
        label="name-of-10000-chars.txt",
    ),
]

IMAGES = [
    item("bomb_header_50000x50000.png", "refused", BOMB),
    item("bomb_header_maxint.png", "refused", BOMB),
    item("pixel_bomb_20000x20000.png", "refused", BOMB),
    item("gif_huge_logical_screen.gif", "refused", BOMB),
    item("gif_frame_far_outside.gif", "refused", BOMB),
    item("jpeg_claiming_65000x65000.jpg", "refused", BOMB),
    item("ztxt_bomb.png", "refused", "damaged"),
    item("zero_width.png", "refused", "damaged"),
    item("truncated.png", "refused", "damaged"),
    item("zero_byte.png", "refused", "empty"),
    item("svg_renamed.png", "refused", "SVG"),
    item("svg_xml_prolog_renamed.png", "refused", "SVG"),
    item("html_renamed.png", "refused", "HTML"),
    item("pdf_renamed.png", "refused", "PDF"),
    item("long_strip.png", "refused", "narrow"),
    item("animated.gif", "accepted"),
    item("animated_apng.png", "accepted"),
    item("animated.webp", "accepted"),
    item("large_allowed_6000x6000.png", "accepted", slow=True),
]

# Agent names: the product allows letters of any script, digits, single spaces and
# . ' - between them, so mentions, markdown and invisible or direction-changing
# characters are refused, while right-to-left scripts are names like any other.
NAME_RULE = "Agent names may use letters"
NAMES = [
    pytest.param("@everyone", NAME_RULE, id="at-everyone"),
    pytest.param("@here", NAME_RULE, id="at-here"),
    pytest.param("<@123>", NAME_RULE, id="user-mention"),
    pytest.param("<@&456>", NAME_RULE, id="role-mention"),
    pytest.param("<#789>", NAME_RULE, id="channel-mention"),
    pytest.param("Nova @everyone", NAME_RULE, id="name-then-everyone"),
    pytest.param("**Nova**", NAME_RULE, id="bold"),
    pytest.param("`Nova`", NAME_RULE, id="backticks"),
    pytest.param("[Nova](https://evil.example)", NAME_RULE, id="link"),
    pytest.param("||Nova||", NAME_RULE, id="spoiler"),
    pytest.param("No\u200bva", NAME_RULE, id="zero-width-space"),
    pytest.param("No\u2060va", NAME_RULE, id="word-joiner"),
    pytest.param("\u202eavoN", NAME_RULE, id="rtl-override"),
    pytest.param("Nova\u202e", NAME_RULE, id="rtl-override-trailing"),
    pytest.param("\u200b", NAME_RULE, id="only-zero-width"),
    pytest.param("Nova\x00", NAME_RULE, id="nul"),
    pytest.param("   ", "needs a name", id="blank"),
    pytest.param("نوفا", None, id="arabic-accepted"),
    pytest.param("נובה", None, id="hebrew-accepted"),
    pytest.param("Nova-7 d'Été", None, id="latin-punctuation-accepted"),
]

PROMPT_LIMIT = "the limit is 4,000"
PROMPTS = [
    pytest.param("Greet @everyone and @here loudly.", None, id="everyone-here"),
    pytest.param("Ping <@123>, <@&456> and <#789> often.", None, id="user-role-channel"),
    pytest.param("**Bold** `code` [link](https://evil.example) ||spoiler||", None, id="markdown"),
    pytest.param("```python\nunclosed code block", None, id="unclosed-fence"),
    pytest.param("You are \u202eevil\u202c and zero\u200bwidth\u2060.", None, id="invisible-rtl"),
    pytest.param("أنت فلكي صبور. אתה אסטרונום.", None, id="rtl-scripts"),
    pytest.param(long_text(10_000), PROMPT_LIMIT, id="10000-chars"),
    pytest.param("Nice\x00persona", "NUL", id="nul"),
    pytest.param("  \n\t ", "cannot be empty", id="blank"),
]

CHAT_MESSAGES = [
    pytest.param("Hello @everyone and @here!", id="everyone-here"),
    pytest.param("Say <@123> <@&456> <#789> back to me", id="user-role-channel"),
    pytest.param("**bold** `code` [link](https://evil.example) ```unclosed", id="markdown"),
    pytest.param("zero\u200bwidth \u2060joiner \u202eoverride", id="invisible-rtl"),
]


# --- fixtures and checks ------------------------------------------------------------------


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], bytes]:
    """The bytes of an item; large ones are built on first use, once per session."""
    folder = tmp_path_factory.mktemp("hostile-large")

    def read(name: str) -> bytes:
        if name not in LARGE:
            return (DATA / name).read_bytes()
        path = folder / name
        if not path.exists():
            write_large(folder, [name])
        return path.read_bytes()

    return read


@module_fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@module_fixture
async def services(
    tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI
) -> AsyncIterator[Services]:
    folder = tmp_path_factory.mktemp("hostile-bot")
    config = Config(
        storage=StorageSettings(database=str(folder / "bot.db"), data_dir=str(folder / "data")),
        openai=OpenAISettings(base_url=fake_openai.base_url, timeout_seconds=2, max_retries=0),
        # Bombs that the reader cannot bound by counting meet the worker's deadline.
        limits=LimitsSettings(extraction_seconds=EXTRACTION_DEADLINE),
    )
    opened = await Services.open(config, ai=AIGateway(config.openai, "test-key", strict=True))
    try:
        yield opened
    finally:
        await opened.close()


@module_fixture
async def shared_bot(services: Services) -> AgentBot:
    instance = AgentBot(services.config, services)
    await instance.load_cogs()
    on_virtual_time(instance)
    return instance


_guilds = itertools.count(GUILD)


@pytest.fixture
def account() -> str:
    """A server of this test's own: its account, agents and documents start empty."""
    return f"guild:{next(_guilds)}"


@pytest.fixture
def owner(shared_bot: AgentBot, account: str, fake_openai: FakeOpenAI) -> CommandRunner:
    fake_openai.chat_answer = "I am a fake agent."
    guild = int(account.removeprefix("guild:"))
    return CommandRunner(shared_bot, user_id=OWNER, guild_id=guild, owner_id=OWNER)


@per_test_fixture
async def nova(owner: CommandRunner) -> None:
    assert "Created" in text(await owner.run('/agent create name:Nova prompt:"An astronomer"'))


@dataclass(frozen=True)
class State:
    """Everything a refused input must leave as it was."""

    used: int
    held: int
    bonus: int
    usage_rows: int
    documents: int
    chunks: int
    agents: int
    prompts: tuple[str, ...]
    avatars: tuple[str | None, ...]
    files: frozenset[str]
    requests: int
    embedding_tokens: int
    chat_tokens: int


async def state(services: Services, fake_openai: FakeOpenAI, account: str) -> State:
    balance = await services.ledger.balance(account)
    reader = services.ledger.store.reader
    counts = await reader.execute_fetchall(
        "SELECT (SELECT COUNT(*) FROM token_usage WHERE account_id = ?),"
        " (SELECT COUNT(*) FROM documents), (SELECT COUNT(*) FROM chunks)",
        (account,),
    )
    agents = await services.repo.agents(account)
    data = services.config.data_path()
    files = frozenset(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    return State(
        balance.tokens_used,
        balance.tokens_held,
        balance.bonus_tokens,
        counts[0][0],
        counts[0][1],
        counts[0][2],
        len(agents),
        tuple(a.prompt for a in agents),
        tuple(a.avatar_path for a in agents),
        files,
        len(fake_openai.requests),
        fake_openai.reported_tokens("embeddings"),
        fake_openai.reported_tokens("chat"),
    )


def assert_clear_refusal(sent: list[Sent], says: str) -> None:
    body = text(sent)
    assert "❌" in body, body
    assert says.lower() in body.lower(), body
    for internal in NOT_A_SENTENCE:
        assert internal not in body, body
    assert sent[-1].ephemeral, "a refusal is shown only to the member who asked"
    assert_mentions_disabled(sent)


async def assert_still_answers(runner: CommandRunner, services: Services) -> None:
    sent = await runner.run("/tokens")
    assert "Tokens: Free plan" in text(sent) and "Remaining" in text(sent)
    assert await services.ledger.verify() == []


# --- /docs upload -------------------------------------------------------------------------


def actor(account: str) -> Actor:
    return Actor(account, OWNER, int(account.removeprefix("guild:")))


@pytest.mark.parametrize("case", DOCUMENTS)
@in_module_loop
async def test_document_upload(
    case: Item,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
    corpus: Callable[[str], bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.text_limit is not None:
        monkeypatch.setattr(bot.core.documents.extract, "MAX_PDF_TEXT_CHARS", case.text_limit)
    pool = services.documents.extraction
    if case.deadline is not None:
        monkeypatch.setattr(pool, "limits", replace(pool.limits, deadline_seconds=case.deadline))
    if case.memory_mb is not None:
        bound = case.memory_mb * 1024 * 1024
        monkeypatch.setattr(pool, "limits", replace(pool.limits, memory_bytes=bound))
    data = corpus(case.name)
    filename = case.upload_as or case.name
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(
        ["docs", "upload"], {"agent": "Nova", "file": StandInAttachment(filename, data)}
    )
    assert_mentions_disabled(sent)
    after = await state(services, fake_openai, account)
    if case.expect == "accepted":
        body = text(sent)
        assert "✅ Learned" in body, body
        reported = after.embedding_tokens - before.embedding_tokens
        assert reported > 0 and after.used - before.used == reported
        assert f"Used {reported:,} tokens." in body
        assert after.held == 0 and after.usage_rows == before.usage_rows + 1
        assert after.documents == before.documents + 1 and after.chunks > before.chunks
        (document,) = await services.documents.list(actor(account), "Nova")
        # The stored (and shown) name is defused: no mention, markdown or invisible mark.
        assert 0 < len(document.name) <= 100
        assert not any(c in document.name for c in "@<>*`\u200b\u2060\u202e")
        assert document.name in body
    else:
        assert_clear_refusal(sent, case.says)
        assert after == before, "a refused upload charges, stores and asks nothing"
    await assert_still_answers(owner, services)


@pytest.mark.slow
@in_module_loop
async def test_megabytes_of_one_line_are_learned_and_charged_on_pro(
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
    corpus: Callable[[str], bytes],
) -> None:
    # The same 2 MB line the free plan cannot afford: linear chunking, exact charge.
    await services.ledger.set_plan(account, "pro", actor="test", reason="test")
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(
        ["docs", "upload"],
        {"agent": "Nova", "file": StandInAttachment("line.pdf", corpus("one_line_2mb.pdf"))},
    )
    assert "✅ Learned line.pdf" in text(sent), text(sent)
    after = await state(services, fake_openai, account)
    assert after.used == after.embedding_tokens - before.embedding_tokens > 250_000
    assert after.held == 0
    assert await services.ledger.verify() == []


# --- /avatar upload -----------------------------------------------------------------------


@pytest.mark.parametrize("case", IMAGES)
@in_module_loop
async def test_avatar_upload(
    case: Item,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
    corpus: Callable[[str], bytes],
) -> None:
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(
        ["avatar", "upload"],
        {"agent": "Nova", "image": StandInAttachment(case.name, corpus(case.name))},
    )
    assert_mentions_disabled(sent)
    after = await state(services, fake_openai, account)
    assert after.requests == before.requests, "an upload never calls the AI"
    if case.expect == "accepted":
        assert "✅ Avatar uploaded!" in text(sent) and "No tokens used" in text(sent)
        assert after.used == before.used and after.usage_rows == before.usage_rows + 1
        (path,) = after.avatars
        assert path is not None
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (512, 512)
            if "animated" in case.name:  # the first frame (red), not the second (blue)
                red, _, blue = image.convert("RGB").getpixel((256, 256))
                assert red > 200 and blue < 50
        assert len(after.files - before.files) == 1
    else:
        assert_clear_refusal(sent, case.says)
        if case.says == BOMB or case.name.endswith("renamed.png"):
            assert IMAGE_TYPES in text(sent) or "smaller picture" in text(sent)
        assert after == before, "a refused upload stores nothing"
    await assert_still_answers(owner, services)


# --- /agent create and edit ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "refusal"), NAMES)
@in_module_loop
async def test_agent_name(
    name: str,
    refusal: str | None,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
) -> None:
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(["agent", "create"], {"name": name, "prompt": "An astronomer"})
    assert_mentions_disabled(sent)
    if refusal is None:
        assert f"Created **{name}**" in text(sent)
        shown = await owner.invoke(["agent", "info"], {"name": name})
        assert name in text(shown)
        assert_mentions_disabled(shown)
        chat = await owner.invoke(["chat"], {"agent": name, "message": "Hello"})
        assert "I am a fake agent." in text(chat) and name in [
            e.author.name for e in chat[1].embeds
        ]
        after = await state(services, fake_openai, account)
        assert after.used == after.chat_tokens - before.chat_tokens > 0
    else:
        assert_clear_refusal(sent, refusal)
        assert await state(services, fake_openai, account) == before
    # Whatever was typed, no stored name carries live mention syntax.
    for agent in await services.repo.agents(account):
        assert not any(m in agent.name for m in LIVE_MENTION)
    await assert_still_answers(owner, services)


@in_module_loop
async def test_ten_thousand_character_name_is_refused_by_discord_and_by_the_service(
    account: str, owner: CommandRunner, services: Services, fake_openai: FakeOpenAI
) -> None:
    name = long_text(10_000)
    before = await state(services, fake_openai, account)
    # Discord itself rejects an option over its declared 32 characters...
    with pytest.raises(UsageError, match=f"at most {NAME_MAX} characters"):
        await owner.invoke(["agent", "create"], {"name": name, "prompt": "An astronomer"})
    # ...and the service does not rely on it (the console and the modal path share it).
    with pytest.raises(InvalidInput, match=f"at most {NAME_MAX}"):
        await services.agents.create(actor(account), name, "An astronomer")
    assert await state(services, fake_openai, account) == before
    await assert_still_answers(owner, services)


@pytest.mark.parametrize(("prompt", "refusal"), PROMPTS)
@in_module_loop
async def test_agent_create_with_prompt(
    prompt: str,
    refusal: str | None,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
) -> None:
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(["agent", "create"], {"name": "Vega", "prompt": prompt})
    assert_mentions_disabled(sent)
    if refusal is None:
        assert "Created **Vega**" in text(sent)
        # A persona is the member's own text: kept as written, echoed without pinging.
        shown = await owner.run("/agent info name:Vega")
        assert prompt.strip() in text(shown)
        assert_mentions_disabled(shown)
        assert_mentions_disabled(await owner.run("/agent list"))
    else:
        assert_clear_refusal(sent, refusal)
        assert await state(services, fake_openai, account) == before
    await assert_still_answers(owner, services)


@pytest.mark.parametrize(("prompt", "refusal"), PROMPTS)
@in_module_loop
async def test_agent_edit_with_prompt(
    prompt: str,
    refusal: str | None,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
) -> None:
    before = await state(services, fake_openai, account)
    # /agent edit opens the persona form; the runner fills it with `prompt` and submits.
    sent = await owner.invoke(["agent", "edit"], {"name": "Nova", "prompt": prompt})
    assert sent[0].kind == "modal"
    assert_mentions_disabled(sent)
    (agent,) = await services.repo.agents(account)
    if refusal is None:
        assert "Updated **Nova**" in text(sent)
        assert agent.prompt == prompt.strip()
    else:
        assert_clear_refusal(sent, refusal)
        assert agent.prompt == "An astronomer"
        assert await state(services, fake_openai, account) == before
    await assert_still_answers(owner, services)


# --- /chat --------------------------------------------------------------------------------


@pytest.mark.parametrize("message", CHAT_MESSAGES)
@in_module_loop
async def test_chat_echoes_hostile_text_without_pinging(
    message: str,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
) -> None:
    # The model repeats the member's words (as models do): the reply carries them as
    # text, and no message allows a mention to ping.
    fake_openai.chat_answer = lambda messages: f"You said: {messages[-1]['content']}"
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(["chat"], {"agent": "Nova", "message": message})
    assert message in text(sent)
    assert_mentions_disabled(sent)
    after = await state(services, fake_openai, account)
    assert after.requests == before.requests + 1
    assert after.used == after.chat_tokens - before.chat_tokens > 0
    await assert_still_answers(owner, services)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("@everyone", id="at-everyone"),
        pytest.param("<@&456>", id="role-mention"),
        pytest.param("**Nova**", id="bold"),
        pytest.param("No\u200bva\u202e", id="invisible-rtl"),
        pytest.param(long_text(10_000), id="10000-chars"),
    ],
)
@in_module_loop
async def test_chat_with_a_hostile_agent_name_is_refused_without_a_call(
    name: str,
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
) -> None:
    before = await state(services, fake_openai, account)
    sent = await owner.invoke(["chat"], {"agent": name, "message": "Hello"})
    # The typed name is echoed (cut to 32 characters) only when it could be a name: never
    # mention or markdown syntax; and in an embed sent with mentions off besides.
    assert_clear_refusal(sent, "No agent")
    typed = name[:NAME_MAX]
    if _NAME.fullmatch(typed):
        assert f"No agent named {typed} here." in text(sent)
    else:
        assert "No agent by that name here." in text(sent)
    assert sent[-1].content is None and sent[-1].embeds
    assert await state(services, fake_openai, account) == before
    await assert_still_answers(owner, services)


@in_module_loop
async def test_ten_thousand_character_chat_message_is_refused_without_a_call(
    account: str,
    owner: CommandRunner,
    services: Services,
    fake_openai: FakeOpenAI,
    nova: None,
) -> None:
    before = await state(services, fake_openai, account)
    with pytest.raises(UsageError, match="at most 4000 characters"):  # Discord's own limit
        await owner.invoke(["chat"], {"agent": "Nova", "message": long_text(10_000)})
    with pytest.raises(InvalidInput, match="at most 4,000"):
        await services.chat.ask(actor(account), "Nova", "t", long_text(10_000))
    assert await state(services, fake_openai, account) == before
    await assert_still_answers(owner, services)


# --- the corpus itself --------------------------------------------------------------------


def test_every_corpus_file_is_tried_and_every_tried_file_exists() -> None:
    used = {p.values[0].name for p in DOCUMENTS + IMAGES}  # type: ignore[union-attr]
    committed = {p.name for p in DATA.iterdir() if p.name != "README.md"}
    assert committed == set(SMALL), "tests/data/hostile and tests.hostile.SMALL differ"
    assert used <= committed | set(LARGE)
    assert (committed | set(LARGE)) - used == set(), "an item of the corpus is never tried"


def test_the_generator_writes_what_the_suite_uses(tmp_path: Path) -> None:
    written = write_large(tmp_path, ["same_page_5000_times.pdf", "form_bomb.pdf"])
    assert [p.name for p in written] == ["same_page_5000_times.pdf", "form_bomb.pdf"]
    assert all(0 < p.stat().st_size < 64 * 1024 for p in written)  # bombs, yet small files
    assert io.BytesIO(written[0].read_bytes()).read(5) == b"%PDF-"
