"""The console as an operator uses it (issue 16, point 9): markup rendered, choices and
option types checked as Discord checks them, --member, files written once, /help."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.config import Config
from bot.front.console import run_console
from bot.front.markup import plain
from bot.services import Services
from tests.children import bot_env


def test_markup_reads_as_the_client_shows_it() -> None:
    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    stamp = int(datetime(2027, 1, 3, 12, 0, tzinfo=UTC).timestamp())
    text = f"Resets <t:{stamp}:D> (<t:{stamp}:R>), by <@1> in <#5>\n-# the small print"
    assert plain(text, now=now) == (
        "Resets 3 January 2027 (in 1 month), by @user1 in #channel5\nthe small print"
    )
    assert plain(f"<t:{stamp}:d> <t:{stamp}>", now=now) == "2027-01-03 3 January 2027 12:00 UTC"
    assert plain("<t:0:R>", now=now).endswith(" years ago")
    assert plain("<t:9999999999999:R>", now=now) == "<t:9999999999999:R>"  # no traceback
    assert plain("✅ Created **Nova**. Try `/chat`.") == "✅ Created Nova. Try /chat."
    fenced = "```py\nx = `a` ** 2\n```"
    assert plain(fenced) == fenced  # a code block keeps its fences and its text


async def session(
    config: Config, services: Services, out: Path, script: str, **where: object
) -> str:
    output = io.StringIO()
    arguments = {"user_id": 1, "guild_id": None, **where}
    code = await run_console(
        config,
        out_dir=out,
        lines=io.StringIO(script),
        output=output,
        services=services,
        **arguments,  # type: ignore[arg-type]
    )
    assert code == 0
    return output.getvalue()


async def test_no_raw_markup_and_each_file_written_once(
    tmp_path: Path, app_config: Config, services: Services
) -> None:
    script = "\n".join(
        [
            '/agent create name:Nova prompt:"An astronomer"',
            "/avatar generate agent:Nova",
            "/agent info name:Nova",
            "/agent info name:Nova",
            "/tokens",
        ]
    )
    printed = await session(app_config, services, tmp_path / "out", script)
    assert "<t:" not in printed and "<@" not in printed and "\n-# " not in printed
    assert "**" not in printed and "`/avatar" not in printed
    assert "Resets: " in printed and " UTC" not in printed.split("Resets: ")[1][:20]
    saved = [
        line.removeprefix("file: ") for line in printed.splitlines() if line.startswith("file: ")
    ]
    assert len(saved) >= 3  # the generation's answer and each /agent info
    assert len(set(saved)) == 1  # one avatar, one file
    assert len(list((tmp_path / "out").iterdir())) == 1


async def test_choices_and_option_types_are_checked_as_discord_does(
    tmp_path: Path, app_config: Config, services: Services
) -> None:
    app_config.admins.user_ids = [1]
    script = "\n".join(
        [
            "/admin plan member:5 plan:gold",
            "/admin plan member:5 plan:pro reason:test",
            "/admin grant member:5 amount:abc reason:x",
            "/admin grant member:5 amount:1_000 reason:x",
            "/admin grant member:bob amount:5 reason:x",
            "/limits role role:<@&77> amount:2.5",
            "/docs upload agent:Nova file:./no-such-file.pdf",
        ]
    )
    printed = await session(app_config, services, tmp_path / "out", script, guild_id=1000)
    assert "error: plan must be one of: " in printed and "(not 'gold')" in printed
    assert "Something went wrong" not in printed
    assert "is on pro" in printed
    for refusal in (
        "error: amount must be a whole number, not 'abc'",
        "error: amount must be a whole number, not '1_000'",  # Python's int() takes it
        "error: member must be a member (<@id> or an id), not 'bob'",
        "error: amount must be a whole number, not '2.5'",
        "error: file: cannot read ./no-such-file.pdf: No such file or directory",
    ):
        assert refusal in printed, printed
    assert "invalid literal" not in printed and "Errno" not in printed


async def test_member_acts_without_manage_server(
    tmp_path: Path, app_config: Config, services: Services
) -> None:
    as_owner = await session(app_config, services, tmp_path / "o", "/upgrade", guild_id=1000)
    as_member = await session(
        app_config, services, tmp_path / "m", "/upgrade", guild_id=1000, member=True
    )
    refusal = "Only the server owner or a member with "
    assert refusal not in as_owner and refusal in as_member


async def test_help_lists_the_commands_with_their_options(
    tmp_path: Path, app_config: Config, services: Services
) -> None:
    printed = await session(app_config, services, tmp_path / "out", "/help")
    assert "/agent create name: [prompt:]" in printed and "/tokens  (" in printed
    # The real /help first, as text: each command's cost, the plan, the balance (issue 14).
    assert printed.index("(5,000 tokens)") < printed.index("/agent create name: [prompt:]")
    assert "You: Free, 250,000 tokens remaining" in printed and "Use /upgrade" in printed
    alone = await session(app_config, services, tmp_path / "out", "help")
    assert "/agent create name: [prompt:]" in alone and "tokens remaining" not in alone


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_banner_when_interactive_only(
    tmp_path: Path, app_config: Config, services: Services
) -> None:
    for lines, shown in ((Terminal("/tokens\n"), True), (io.StringIO("/tokens\n"), False)):
        output = io.StringIO()
        await run_console(
            app_config,
            user_id=1,
            guild_id=7,
            out_dir=tmp_path,
            lines=lines,
            output=output,
            services=services,
            member=True,
        )
        first = output.getvalue().splitlines()[0]
        assert first.startswith("Agent bot console: slash commands as user 1") is shown, first
        if shown:
            assert "in server 7, as a member without Manage Server" in first
            assert "/help lists the commands" in output.getvalue()


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("/admin plan member:5 plan:gold", "error: plan must be one of: "),
        ("/nonsense", "error: no command /nonsense"),
    ],
)
def test_through_the_real_entry_point(tmp_path: Path, line: str, said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--user", "1", "--guild", "7"],
        input=line + "\n",
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=bot_env(BOT_STORAGE__DATABASE=str(tmp_path / "bot.db"), BOT_ADMINS__USER_IDS="[1]"),
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert said in done.stdout and "Traceback" not in done.stdout


def test_member_needs_a_guild(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot", "console", "--user", "1", "--member"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=bot_env(BOT_STORAGE__DATABASE=str(tmp_path / "bot.db")),
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "--member needs --guild: in a DM the user owns the account"
    ]
