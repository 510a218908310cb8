"""`python -m bot ...`: the bot, the sidecar, the console, `check`, the ledger and billing CLI.

Exit codes: 0 done, 1 `ledger verify` found violations or `check` found something `run`
needs missing, 2 a usage, configuration or database problem (one line on stderr, never a
traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Config, ConfigError, load
from bot.logs import setup_logging
from bot.runtime import StartupError, database_fault, open_ledger
from ledger import InvalidAccount, Ledger, LedgerError, check_account_id
from ledger.storage import is_postgres, shown
from ledger.storage.faults import DatabaseFault

EXIT_USAGE = 2


class UsageError(Exception):
    """A bad argument or environment: printed as one line, exit 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config", help="configuration file (default: $BOT_CONFIG or ./config.toml)"
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="the Discord bot and the webhook sidecar (default)")
    commands.add_parser("webhooks", help="the webhook sidecar alone")
    console = commands.add_parser("console", help="slash commands from standard input")
    console.add_argument("--user", type=int, required=True, help="the acting Discord user id")
    console.add_argument("--guild", type=int, help="act inside this server (default: a DM)")
    console.add_argument("--out", default="out", help="folder for files the bot sends")
    console.add_argument(
        "--member",
        action="store_true",
        help="with --guild: act as a member without Manage Server (default: the owner)",
    )
    check = commands.add_parser(
        "check", help="validate the configuration and database; print the invite URL"
    )
    check.add_argument(
        "--online", action="store_true", help="also ask Discord, the AI API and LemonSqueezy"
    )

    ledger = commands.add_parser("ledger", help="inspect and adjust the token ledger")
    actions = ledger.add_subparsers(dest="action", required=True)
    balance = actions.add_parser("balance", help="an account's balance")
    balance.add_argument("account")
    balance.add_argument("--json", action="store_true")
    for name, text in (("grant", "add bonus tokens"), ("revoke", "take bonus tokens back")):
        adjust = actions.add_parser(name, help=text)
        adjust.add_argument("account")
        adjust.add_argument("amount")
        adjust.add_argument("--reason", required=True)
    plan = actions.add_parser("plan", help="set an account's plan")
    plan.add_argument("account")
    plan.add_argument("plan", choices=["free", "pro"])
    plan.add_argument("--reason", default="set by an operator")
    history = actions.add_parser("history", help="an account's audit log, newest first")
    history.add_argument("account")
    history.add_argument("--json", action="store_true")
    history.add_argument("--limit", type=int, default=50)
    usage = actions.add_parser("usage", help="this period's charges of an account, grouped")
    usage.add_argument("account")
    usage.add_argument("--by", choices=["member", "agent", "operation", "day"], default="member")
    usage.add_argument("--json", action="store_true")
    actions.add_parser("export", help="the whole audit log as CSV on standard output")
    backup = actions.add_parser("backup", help="a consistent copy of the database, while it runs")
    backup.add_argument("path", help="the file to write (must not exist)")
    actions.add_parser("sweep", help="release holds of stopped processes")
    actions.add_parser(
        "compact", help="archive old resolved holds and give free space back, online"
    )
    verify = actions.add_parser(
        "verify",
        help="check every ledger invariant (what changed since the last clean run);"
        " exit 1 on a violation",
    )
    verify.add_argument("--full", action="store_true", help="walk the whole audit log")

    billing = commands.add_parser("billing", help="webhook events and subscriptions")
    steps = billing.add_subparsers(dest="action", required=True)
    replay = steps.add_parser("replay", help="apply a stored event again from its raw body")
    replay.add_argument("event_id", type=int)
    link = steps.add_parser("link", help="attach a subscription bought without custom data")
    link.add_argument("subscription_id")
    link.add_argument("account")
    listing = steps.add_parser("events", help="what was received and what each did, newest first")
    listing.add_argument("--account")
    listing.add_argument("--limit", type=int, default=50)
    storage = commands.add_parser("storage", help="move the database to another engine")
    moves = storage.add_subparsers(dest="action", required=True)
    copy = moves.add_parser("copy", help="copy this SQLite database into an empty PostgreSQL one")
    copy.add_argument("--to", required=True, metavar="postgresql://...")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    command = args.command or "run"
    config: Config | None = None
    try:
        config = load(args.config)
        handler = COMMANDS[command]
        return handler(config, args)
    except (ConfigError, UsageError, StartupError) as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    except DatabaseFault as error:
        assert config is not None  # loading the configuration opens no database
        print(database_fault(config, error), file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `ledger export | head`: the reader has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _run(config: Config, args: argparse.Namespace) -> int:
    if config.secrets.discord_token is None:
        raise UsageError(
            "DISCORD_TOKEN is not set: create an application at "
            "https://discord.com/developers/applications, add a bot, copy its token, and put "
            "DISCORD_TOKEN=... in .env (see README.md); `python -m bot console` runs without it"
        )
    from bot.front.app import run_bot

    return run_bot(config)


def _check(config: Config, args: argparse.Namespace) -> int:
    """Validate the configuration and the database; print the invite URL. Exit 1 when
    something `run` needs is missing or malformed, naming what and where."""
    from bot.front.app import application_id_from_token, invite_url

    source = config.source
    print(f"configuration: {source} (read)" if source else "configuration: no file; defaults")

    async def database() -> list[str] | None:
        # Only what changed since the last clean `ledger verify`: check stays quick on a
        # ledger of any age. Never verified: say so rather than walk the whole log here.
        # (SQLite's quick_check of every page is cheap beside that, and a damaged file
        # must stop here, not at the first command.)
        async with await open_ledger(config, "cli", check_pages=True) as ledger:
            if not await ledger.verified_before():
                return None
            return [str(v) for v in await ledger.verify()]

    if _database_is_absent(config):
        # A check creates no state (issue 16). Not a problem either: `run` creates it.
        found: list[str] | None = []
        state = "does not exist yet; `python -m bot run` creates it"
    else:
        found = asyncio.run(database())
        state = "ok" if not found else "VIOLATIONS"
        if found is None:
            state = "ok, never verified: run `python -m bot ledger verify`"
    violations = found or []
    print(f"database: {shown(config.storage.database)} ({state})")
    for violation in violations:
        print(f"  {violation}")
    problems = _missing(config)
    if not config.lemonsqueezy.pro_variants():
        print(
            "warning: no Pro variant is configured (lemonsqueezy.variant_id,"
            " lemonsqueezy.pro_variant_ids): no subscription grants Pro"
        )
    for name in (
        "discord_token",
        "openai_api_key",
        "lemonsqueezy_api_key",
        "lemonsqueezy_webhook_secret",
    ):
        present = getattr(config.secrets, name) is not None
        print(f"{name.upper()}: {'set' if present else 'not set'}")
    token = config.secrets.discord_token
    app_id = application_id_from_token(token.get_secret_value()) if token else None
    print(f"invite URL: {invite_url(app_id or 'YOUR_APPLICATION_ID')}")
    if args.online:
        from bot.front.online import probe

        report = asyncio.run(probe(config))
        for line in report.said:
            print(line)
        problems += report.missing
    for problem in problems:
        print(f"missing: {problem}")
    return 1 if violations or problems else 0


_ENV_WHERE = "(in the environment or the .env beside the configuration file)"


def _missing(config: Config) -> list[str]:
    """What `run` needs and does not have, each as where to put it."""
    from bot.front.app import application_id_from_token

    secrets, shop = config.secrets, config.lemonsqueezy
    problems = []
    token = secrets.discord_token
    if token is None:
        problems.append(f"DISCORD_TOKEN is not set {_ENV_WHERE}")
    elif application_id_from_token(token.get_secret_value()) is None:
        problems.append(
            "DISCORD_TOKEN is not a bot token (its first part must be the application id): "
            "copy it again from the developer portal, Bot > Reset Token"
        )
    if secrets.openai_api_key is None:
        problems.append(f"OPENAI_API_KEY is not set {_ENV_WHERE}")
    api_key = secrets.lemonsqueezy_api_key
    billing = bool(api_key or secrets.lemonsqueezy_webhook_secret or shop.store_id)
    billing = billing or bool(shop.variant_id or shop.checkout_url)
    if billing:
        if not shop.checkout_url and not (api_key and shop.store_id and shop.variant_id):
            problems.append(
                "no checkout: set lemonsqueezy.checkout_url, or LEMONSQUEEZY_API_KEY with "
                "lemonsqueezy.store_id and lemonsqueezy.variant_id"
            )
        if secrets.lemonsqueezy_webhook_secret is None:
            problems.append(
                f"LEMONSQUEEZY_WEBHOOK_SECRET is not set {_ENV_WHERE}: every webhook would "
                "be refused and no payment would reach the ledger"
            )
    return problems


def _webhooks(config: Config, args: argparse.Namespace) -> int:
    from bot.http.sidecar import serve_alone

    return asyncio.run(serve_alone(config))


def _console(config: Config, args: argparse.Namespace) -> int:
    from bot.front.console import main as console_main

    if args.member and args.guild is None:
        raise UsageError("--member needs --guild: in a DM the user owns the account")
    return console_main(config, args.user, args.guild, args.out, args.member)


# ---- ledger ---------------------------------------------------------------------------

_AMOUNT = re.compile(r"[0-9]+")


def _account(text: str) -> str:
    try:
        return check_account_id(text)
    except InvalidAccount as error:
        raise UsageError(str(error)) from None


def _amount(text: str, config: Config) -> int:
    if not _AMOUNT.fullmatch(text) or int(text) == 0:
        raise UsageError(f"amount {text!r} is not a positive whole number of tokens")
    amount = int(text)
    if amount > config.limits.max_grant:
        raise UsageError(f"amount {amount} is over limits.max_grant ({config.limits.max_grant})")
    return amount


def _database_is_absent(config: Config) -> bool:
    """A SQLite file that is not there (opening it would create it); a PostgreSQL
    address is never absent here: connecting tells."""
    database = config.storage.database
    return not is_postgres(database) and not Path(database).exists()


def _require_database(config: Config) -> None:
    """A SQLite file must exist (opening one would create an empty ledger); a PostgreSQL
    address is checked by connecting."""
    if _database_is_absent(config):
        raise UsageError(
            f"no database at {config.storage.database} (storage.database / BOT_STORAGE__DATABASE)"
        )


def _ledger(config: Config, args: argparse.Namespace) -> int:
    _require_database(config)
    if args.action == "backup":
        if is_postgres(config.storage.database):
            raise UsageError("backup copies a SQLite file; back PostgreSQL up with pg_dump")
        return _backup(config, args.path)
    account = _account(args.account) if hasattr(args, "account") else None
    amount = _amount(args.amount, config) if hasattr(args, "amount") else None
    try:
        return asyncio.run(_ledger_action(config, args, account, amount))
    except LedgerError as error:
        raise UsageError(str(error)) from None


def _backup(config: Config, target: str) -> int:
    from ledger.storage.backup import BackupError, backup

    try:
        report = backup(config.storage.database, target)
    except BackupError as error:
        raise UsageError(f"backup: {error}") from None
    except OSError as error:
        raise UsageError(f"backup: {target}: {error.strerror or error}") from None
    print(
        f"backup of {config.storage.database} written to {report.path} ({report.size_bytes} bytes)"
    )
    return 0


async def _ledger_action(
    config: Config, args: argparse.Namespace, account: str | None, amount: int | None
) -> int:
    actor = f"cli:{getpass.getuser()}"
    # verify reads every page first: a damaged file is not "ok" (exit 2, not 1).
    checked = args.action == "verify"
    async with await open_ledger(config, "cli", check_pages=checked) as ledger:
        match args.action:
            case "balance":
                assert account is not None
                if not args.json and not await ledger.history(account, 1):
                    # balance() would show a fresh account whose period starts now.
                    # (--json keeps its one shape: what the first use would create.)
                    print(f"{account} has no activity yet")
                    return 0
                balance = await ledger.balance(account)
                if args.json:
                    print(json.dumps(balance.to_json()))
                else:
                    for key, value in balance.to_json().items():
                        print(f"{key:14} {value}")
            case "grant" | "revoke":
                assert account is not None and amount is not None
                change = getattr(ledger, args.action)
                result = await change(account, amount, actor, args.reason)
                print(
                    f"{args.action} {result.applied} tokens on {account}: "
                    f"bonus {result.bonus_tokens}, available {result.available}"
                )
            case "plan":
                assert account is not None
                balance = await ledger.set_plan(account, args.plan, actor=actor, reason=args.reason)
                print(f"{account} is on {balance.plan_type}: available {balance.available}")
            case "history":
                assert account is not None
                entries = await ledger.history(account, args.limit)
                if args.json:
                    print(json.dumps([e.__dict__ for e in entries]))
                else:
                    # The acting user: a member for charges, the operator or the payment
                    # provider for grants, plan changes, fresh periods and refunds.
                    print(
                        f"{'when':27} {'operation':15} {'status':9} {'tokens':>9} {'bonus':>10}"
                        f" {'by':20} details"
                    )
                for e in entries if not args.json else []:
                    what = " ".join(x for x in (e.model_used, e.details) if x)
                    print(
                        f"{e.created_at:27} {e.operation_type:15} {e.status:9} {e.tokens_used:>9}"
                        f" {e.bonus_delta:>+10} {e.user_id or '':20} {what}".rstrip()
                    )
            case "usage":
                assert account is not None
                await _usage(ledger, account, args.by, args.json)
            case "export":
                with Progress("export", "rows") as progress:
                    await ledger.export_csv(sys.stdout, progress=progress.ids)
            case "sweep":
                report = await ledger.sweep()
                print(
                    f"released {report.orphaned} holds of stopped processes and "
                    f"{report.expired} expired holds ({report.tokens_freed} tokens)"
                )
            case "compact":
                compacted = await ledger.compact()
                if compacted.converted:
                    print("switched the file to incremental vacuum (one full VACUUM, once)")
                print(
                    f"archived {compacted.archived_holds} resolved holds; gave back"
                    f" {compacted.bytes_freed / 2**20:.1f} MiB; WAL "
                    + ("emptied" if compacted.wal_emptied else "in use by a reader, left as is")
                )
            case "verify":
                with Progress("verify", "") as progress:
                    violations = await ledger.verify(full=args.full, progress=progress.phase)
                for violation in violations:
                    print(violation)
                if violations:
                    return 1
                print("ledger ok")
    return 0


async def _usage(ledger: Ledger, account: str, by: str, as_json: bool) -> None:
    """The figures /usage shows, every group of them (/usage keeps the top 10 members)."""
    rows = await ledger.usage_by(account, by)
    balance = await ledger.balance(account)
    total = sum(n for _, n in rows)
    if as_json:
        print(
            json.dumps(
                {
                    "account_id": account,
                    "by": by,
                    "period_start": balance.period_start.isoformat(),
                    "period_end": balance.period_end.isoformat(),
                    "tokens_limit": balance.tokens_limit,
                    "total": total,
                    "rows": [{by: key, "tokens": n} for key, n in rows],
                }
            )
        )
        return
    print(f"{by:24} {'tokens':>12}")
    for key, n in rows:
        print(f"{key or '-':24} {n:>12}")
    print(f"{'total':24} {total:>12}")


# ---- billing ----------------------------------------------------------------------------


def _billing(config: Config, args: argparse.Namespace) -> int:
    _require_database(config)
    account = _account(args.account) if getattr(args, "account", None) else None
    try:
        return asyncio.run(_billing_action(config, args, account))
    except LedgerError as error:
        raise UsageError(str(error)) from None


async def _billing_action(config: Config, args: argparse.Namespace, account: str | None) -> int:
    from bot.billing import operations
    from bot.billing.service import rules_of

    rules = rules_of(config)
    async with await open_ledger(config, "cli") as ledger:
        match args.action:
            case "replay":
                done = await operations.replay(ledger, rules, args.event_id)
                if not done.changed:
                    print(f"event {args.event_id} was {done.event.outcome} already: nothing done")
                else:
                    o = done.outcome
                    print(
                        f"event {args.event_id} ({done.event.event_name}): {o.outcome}"
                        f" {o.account_id or ''} {o.detail}".rstrip()
                    )
            case "link":
                assert account is not None
                actor = f"cli:{getpass.getuser()}"
                before, after = await operations.link(
                    ledger, rules, args.subscription_id, account, actor
                )
                print(
                    f"subscription {args.subscription_id} linked to {account}: {before} -> {after}"
                )
            case "events":
                print(
                    f"{'id':>6} {'received':27} {'event':32} {'object':10} {'account':24} outcome"
                )
                for e in await operations.events(ledger, account, args.limit):
                    print(
                        f"{e.id:>6} {e.received_at:27} {e.event_name:32} {e.object_id or '':10}"
                        f" {e.account_id or '':24} {e.outcome} {e.detail or ''}".rstrip()
                    )
    return 0


class Progress:
    """A progress line on standard error, redrawn at most every PROGRESS_SECONDS, and only
    when standard error is a terminal (a pipe or a log file gets nothing)."""

    def __init__(self, what: str, unit: str, stream: Any = None) -> None:
        self.what, self.unit = what, unit
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty()
        self.last = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.shown and self.last:
            self.stream.write("\r\x1b[K")  # clear the line before the result is printed
            self.stream.flush()

    def ids(self, done: int, total: int) -> None:
        self.phase(self.unit, done, total)

    def phase(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.shown or (now - self.last < PROGRESS_SECONDS and done < total):
            return
        self.last = now
        share = 100 * done // total if total else 100
        self.stream.write(f"\r\x1b[K{self.what}: {phase} {share}% ({done:,}/{total:,})")
        self.stream.flush()


PROGRESS_SECONDS = 0.2


def _storage(config: Config, args: argparse.Namespace) -> int:
    """`storage copy --to URL`: every table of the configured SQLite database into an
    empty PostgreSQL database, then `verify` on both sides."""
    if not is_postgres(args.to):
        raise UsageError("--to must be a postgresql:// address")
    if is_postgres(config.storage.database):
        raise UsageError("storage.database is already PostgreSQL: copy from a SQLite file")
    if _database_is_absent(config):
        raise UsageError(f"no database at {config.storage.database}")
    return asyncio.run(_copy(config, args.to))


async def _copy(config: Config, to: str) -> int:
    from bot.runtime import open_database
    from ledger.storage.copy import TargetNotEmpty, copy

    target_config = config.model_copy(
        update={"storage": config.storage.model_copy(update={"database": to})}
    )
    async with (
        await open_database(config, "cli") as source,
        await open_database(target_config, "cli") as target,
    ):
        try:
            copied = await copy(source.store, target.store)  # type: ignore[arg-type]
        except TargetNotEmpty as error:
            print(error, file=sys.stderr)
            return 1
        for table, rows in copied.tables.items():
            print(f"{table}: {rows} rows")
        failed = False
        for side, ledger in (("source", source), ("target", target)):
            found = await ledger.verify(full=True)
            print(f"verify {side}: {'clean' if not found else f'{len(found)} violations'}")
            for violation in found:
                print(f"  {violation.account_id}: {violation.message}")
            failed = failed or bool(found)
    return 1 if failed else 0


COMMANDS: dict[str, Callable[[Config, Any], int]] = {
    "run": _run,
    "webhooks": _webhooks,
    "console": _console,
    "check": _check,
    "ledger": _ledger,
    "billing": _billing,
    "storage": _storage,
}
