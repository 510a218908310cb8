"""Several OS processes on one database, as in production: bot processes doing paid work,
the webhook sidecar (`python -m bot webhooks`) applying LemonSqueezy events, and the
ledger CLI (`python -m bot ledger grant`) granting tokens, all at once, for a fixed
number of operations (not a duration).

The fake OpenAI server runs in this test's event loop; each process reaches it and the
database through the configuration (BOT_OPENAI__BASE_URL, BOT_STORAGE__DATABASE and a
config.toml in the processes' working folder). What must hold:
- no error reaches a member: every reply is a success or the designed insufficient-tokens
  refusal; no "database is locked" (nor any traceback or ERROR line) in any output or log;
- every webhook answers 200 and each event is applied once (its replay is a duplicate,
  an older snapshot is stale), every CLI grant succeeds;
- `python -m bot ledger verify` exits 0, nothing is held, no hold is pending;
- totals are exact: the charges in token_usage are the fake's reported tokens of the
  completed chats times the model's weight, and 5,000 per generated avatar; every
  completed request was a success for its member and a refused one made no request;
  the bonus granted equals the CLI's grants; tokens_used + the bonus drawn equal the
  charges; the account could not pay for everything, so some work was refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ledger.storage import open_store
from tests.billing.payloads import PRO_VARIANTS, SECRET, STORE_ID, encode, sign, subscription
from tests.children import bot_env

REPO = Path(__file__).resolve().parents[2]
GUILD = 777
ACCOUNT = f"guild:{GUILD}"
CHAT_MODEL = "gpt-5.4-mini"
CHAT_WEIGHT = 1.5  # not 1.0, so that a charge that skips the weight shows
AVATAR_COST = 5000
# About 200 completion tokens: a chat costs some 330 tokens (times the weight).
ANSWER = "Pulsars are spinning neutron stars that sweep beams across the sky. " * 15
_STYLE = re.compile(r"Style: (w\d+ avatar \d+)\.")
FORBIDDEN = ("database is locked", "Traceback", " ERROR ")
GRANT_LANES = 3
LATENCY = 0.15  # of the fake: a paid call takes a while, so the work spans the grants
READY_SECONDS = 120  # a safety net while waiting for a "ready" line, never a pause


@dataclass(frozen=True)
class Case:
    workers: int
    chats: int  # per worker
    avatars: int  # per worker
    concurrency: int  # interactions at once in each worker
    opening_grant: int  # granted by the CLI before the work, so charges draw on bonus too
    grants: int  # granted by the CLI while the work runs
    grant_amount: int
    subscriptions: int  # accounts whose LemonSqueezy events the sidecar receives
    allowance: int  # the free plan's monthly tokens of the working account


class Processes:
    """Every child process of one test: killed (if still running) and reaped at the end."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.running: list[asyncio.subprocess.Process] = []
        self.logs: list[Path] = []
        self.outputs: list[str] = []

    async def start(self, name: str, *args: str) -> asyncio.subprocess.Process:
        log = self.folder / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as stderr:  # the child keeps its own copy of the descriptor
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                cwd=self.folder,
                env=self.env,
            )
        self.running.append(proc)
        return proc

    async def cli(self, name: str, *args: str) -> tuple[int, str]:
        proc = await self.start(name, "-m", "bot", *args)
        out, _ = await proc.communicate()
        text = out.decode()
        self.outputs.append(text)
        assert proc.returncode is not None
        return proc.returncode, text

    async def line(self, proc: asyncio.subprocess.Process, what: str) -> str:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), READY_SECONDS)).decode()
        if not line:
            await proc.wait()
            pytest.fail(f"{what} exited ({proc.returncode}) before it was ready: {self.log_text()}")
        return line

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in self.logs)

    async def close(self) -> None:
        for proc in self.running:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def _environment(tmp_path: Path, database: str, base_url: str) -> dict[str, str]:
    return bot_env(
        BOT_STORAGE__DATABASE=database,
        BOT_STORAGE__DATA_DIR=str(tmp_path / "data"),
        BOT_OPENAI__BASE_URL=base_url,
        BOT_WEBHOOKS__PORT="0",  # any free port: the sidecar prints the one it got
        LEMONSQUEEZY_WEBHOOK_SECRET=SECRET,
        BOT_LEMONSQUEEZY__STORE_ID=STORE_ID,
        BOT_LEMONSQUEEZY__PRO_VARIANT_IDS=json.dumps(list(PRO_VARIANTS)),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )


def _write_config(tmp_path: Path, case: Case) -> None:
    # Model weights can only be set in the file (model names hold dots).
    (tmp_path / "config.toml").write_text(
        f"""
[plans.free]
monthly_tokens = {case.allowance}
max_agents = 3

[costs.model_weights]
"{CHAT_MODEL}" = {CHAT_WEIGHT}

[openai]
chat_model = "{CHAT_MODEL}"
max_retries = 0       # one request per interaction: each request pairs with one reply
timeout_seconds = 60  # never a client-side timeout on a request the fake completed

[lemonsqueezy]
checkout_url = "https://shop.example/checkout/buy/pro"
"""
    )


def _events(case: Case) -> list[list[tuple[dict[str, Any], str]]]:
    """Per subscribing account, its events in order with the outcome each must have:
    created (pro), its replay (a duplicate), for half of them an expiry (back to free),
    then an older snapshot arriving late (stale)."""
    sequences = []
    for number in range(case.subscriptions):
        account, sub = f"guild:{9000 + number}", str(300 + number)
        created = subscription(
            "subscription_created",
            sub_id=sub,
            account_id=account,
            updated_at="2026-11-24T10:00:00.000000Z",
        )
        late = subscription(
            "subscription_updated",
            sub_id=sub,
            account_id=account,
            updated_at="2026-11-24T09:00:00.000000Z",
        )
        events = [(created, "applied"), (created, "duplicate")]
        if number % 2:
            expired = subscription(
                "subscription_expired",
                sub_id=sub,
                status="expired",
                account_id=account,
                updated_at="2026-11-25T10:00:00.000000Z",
            )
            events.append((expired, "applied"))
        events.append((late, "stale"))
        sequences.append(events)
    return sequences


async def _operators(processes: Processes, port: int, case: Case) -> list[str]:
    """What the operators and LemonSqueezy do meanwhile: in GRANT_LANES loops side by side,
    each step posts one account's webhook events (if any are left) and then runs one
    `ledger grant` CLI process. A CLI process spends most of its life starting Python, so
    pacing the webhooks by the grants spreads both over the bots' work, with no sleeps."""
    problems: list[str] = []
    sequences = _events(case)
    url = f"http://127.0.0.1:{port}/webhooks/lemonsqueezy"

    async def post(session: aiohttp.ClientSession, events: list[tuple[Any, str]]) -> None:
        for payload, expected in events:
            body = encode(payload)
            headers = {"Content-Type": "application/json", "X-Signature": sign(body)}
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.text()
                if response.status != 200:
                    problems.append(f"webhook {response.status}: {answer}")
                elif json.loads(answer).get("outcome") != expected:
                    problems.append(f"webhook: expected {expected}, got {answer}")

    async def grant(number: int) -> None:
        code, out = await processes.cli(
            f"grant{number}",
            "ledger",
            "grant",
            ACCOUNT,
            str(case.grant_amount),
            "--reason",
            f"multi-process grant {number}",
        )
        if code != 0 or f"grant {case.grant_amount} tokens on {ACCOUNT}" not in out:
            problems.append(f"grant {number} exited {code}: {out}")

    async with aiohttp.ClientSession() as session:

        async def lane(numbers: range) -> None:
            for number in numbers:
                if sequences:
                    await post(session, sequences.pop())
                await grant(number)

        async with asyncio.TaskGroup() as lanes:
            for k in range(GRANT_LANES):
                lanes.create_task(lane(range(k, case.grants, GRANT_LANES)))
        while sequences:  # more accounts than grants: the rest at the end
            await post(session, sequences.pop())
    return problems


async def _run(tmp_path: Path, database: str, fake: Any, case: Case) -> None:
    fake.chat_answer = ANSWER
    fake.latency = LATENCY
    _write_config(tmp_path, case)
    processes = Processes(tmp_path, _environment(tmp_path, database, fake.base_url))
    began = time.monotonic()
    try:
        # Every process starts at once on a database that does not exist yet (an empty
        # schema on PostgreSQL): they race to create and migrate it too.
        sidecar = await processes.start("sidecar", "-m", "bot", "webhooks")
        workers = [
            await processes.start(
                f"worker{w}",
                "-m",
                "tests.stress.mp_worker",
                f"--worker={w}",
                f"--guild={GUILD}",
                f"--chats={case.chats}",
                f"--avatars={case.avatars}",
                f"--concurrency={case.concurrency}",
            )
            for w in range(case.workers)
        ]
        listening = await processes.line(sidecar, "the sidecar")
        found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", listening)
        assert found, listening
        port = int(found.group(1))
        for number, worker in enumerate(workers):
            ready = await processes.line(worker, f"worker {number}")
            assert ready == "ready\n", ready + processes.log_text()
        code, out = await processes.cli(
            "grant-opening", "ledger", "grant", ACCOUNT, str(case.opening_grant), "--reason", "open"
        )
        assert code == 0, out + processes.log_text()
        started = time.monotonic()

        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(b"go\n")
            await worker.stdin.drain()

        async def finished(worker: asyncio.subprocess.Process) -> dict[str, Any]:
            out, _ = await worker.communicate()
            text = out.decode()
            processes.outputs.append(text)
            assert worker.returncode == 0, text + processes.log_text()
            report: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
            return report

        # A task group, so that a failure anywhere stops the rest (no CLI process is
        # started after the cleanup below).
        async with asyncio.TaskGroup() as group:
            operators = group.create_task(_operators(processes, port, case))
            finishing = [group.create_task(finished(worker)) for worker in workers]
        operator_problems = operators.result()
        reports = [task.result() for task in finishing]
        worked = time.monotonic() - started

        sidecar.send_signal(signal.SIGTERM)  # it closes its ledger and exits 0
        rest, _ = await sidecar.communicate()
        processes.outputs.append(listening + rest.decode())
        assert sidecar.returncode == 0, processes.log_text()

        code, verified = await processes.cli("verify", "ledger", "verify")
        assert (code, verified) == (0, "ledger ok\n")

        assert operator_problems == []
        assert [r["errors"] for r in reports] == [[]] * case.workers
        sources = [("standard output", text) for text in processes.outputs]
        sources += [(path.name, path.read_text(errors="replace")) for path in processes.logs]
        for name, text in sources:
            for forbidden in FORBIDDEN:
                at = text.find(forbidden)
                assert at < 0, f"{forbidden!r} in {name}: {text[max(0, at - 1500) : at + 1500]}"

        totals = await _check_database(database, fake, case, reports)
    finally:
        await processes.close()
    outcomes: Counter[str] = Counter()
    for report in reports:
        outcomes.update(report["outcomes"])
    print(
        f"\nmulti-process: {case.workers} workers x ({case.chats} chats + {case.avatars}"
        f" avatars), {case.grants + 1} CLI grants, {sum(len(e) for e in _events(case))} webhooks;"
        f" outcomes {dict(sorted(outcomes.items()))}; {totals};"
        f" work {worked:.2f} s (workers {[r['seconds'] for r in reports]}),"
        f" all {time.monotonic() - began:.2f} s"
    )


async def _check_database(
    database: str, fake: Any, case: Case, reports: list[dict[str, Any]]
) -> str:
    ok = {tag for r in reports for tag in r["tags"]["ok"]}
    refused = {tag for r in reports for tag in r["tags"]["insufficient"]}
    # Each request the fake received, by the tag its interaction carried.
    requested: dict[str, Any] = {}
    for record in fake.requests:
        if record.endpoint == "chat":
            tag = record.body["messages"][-1]["content"]
        else:
            found = _STYLE.search(record.body.get("prompt", ""))
            assert record.endpoint == "images" and found, record.body
            tag = found.group(1)
        assert tag not in requested, f"two requests for {tag}"
        requested[tag] = record
    assert all(r.failed is None for r in requested.values())
    assert set(requested) == ok  # every completed request was a success, and only those
    assert not refused & set(requested)  # a refused one made no request
    assert refused, "the account could pay for everything: nothing was refused"

    store = await open_store(database)  # read through the store, on either engine
    try:
        read = store.reader.execute_fetchall
        rows = await read(
            "SELECT operation_type, tokens_used, bonus_delta, status, created_at"
            " FROM token_usage WHERE account_id = ?",
            (ACCOUNT,),
        )
        (balance,) = await read("SELECT * FROM usage_limits WHERE account_id = ?", (ACCOUNT,))
        ((pending,),) = await read("SELECT COUNT(*) FROM holds WHERE status = 'pending'")
        holds = {
            r[0]: r[1] for r in await read("SELECT status, COUNT(*) FROM holds GROUP BY status")
        }
        events = await read(
            "SELECT body_sha256, outcome, received_at FROM webhook_events ORDER BY id"
        )
        plans = {
            r[0]: r[1]
            for r in await read(
                "SELECT account_id, plan_type FROM usage_limits WHERE account_id LIKE 'guild:9%'"
            )
        }
        plan_changes = Counter(
            r[0]
            for r in await read(
                "SELECT account_id FROM journal WHERE action = 'plan' AND account_id LIKE 'guild:9%'"
            )
        )
    finally:
        await store.close()

    charges = [r for r in rows if r["status"] == "charged"]
    chat = sorted(r["tokens_used"] for r in charges if r["operation_type"] == "chat")
    assert chat == sorted(
        math.ceil(r.usage["total_tokens"] * CHAT_WEIGHT) for r in fake.completed("chat")
    )
    avatars = [r["tokens_used"] for r in charges if r["operation_type"] == "avatar_generation"]
    assert avatars == [AVATAR_COST] * len(fake.completed("images"))
    assert len(charges) == len(chat) + len(avatars)
    total = sum(chat) + sum(avatars)
    drawn = -sum(r["bonus_delta"] for r in charges)
    grants = [r for r in rows if r["operation_type"] == "grant"]
    granted = sum(r["bonus_delta"] for r in grants)
    assert len(grants) == case.grants + 1
    assert granted == case.opening_grant + case.grants * case.grant_amount

    assert balance["tokens_used"] + drawn == total
    assert balance["bonus_tokens"] == granted - drawn
    assert balance["tokens_used"] <= case.allowance
    assert balance["tokens_held"] == 0 and pending == 0
    # Every hold was committed by its own process: no sweeper (the sidecar's, the other
    # workers') expired a live one, and no call failed.
    assert holds == {"committed": len(ok)}

    # Each distinct event body is recorded once; each change of plan happened once.
    sequences = _events(case)
    distinct = {hashlib.sha256(encode(p)).hexdigest() for events in sequences for p, _ in events}
    assert sorted(e["body_sha256"] for e in events) == sorted(distinct)
    for number, sequence in enumerate(sequences):
        account = f"guild:{9000 + number}"
        applied = sum(1 for _, expected in sequence if expected == "applied")
        assert plan_changes[account] == applied
        assert plans[account] == ("free" if number % 2 else "pro")
    # How much of the grants' and the webhooks' writing fell between the first and the
    # last charge (reported, not asserted: it depends on how fast processes start).
    first, last = min(r["created_at"] for r in charges), max(r["created_at"] for r in charges)
    grants_during = sum(1 for r in grants if first <= r["created_at"] <= last)
    events_during = sum(1 for e in events if first <= e["received_at"] <= last)
    return (
        f"charged {total:,} ({len(chat)} chats, {len(avatars)} avatars),"
        f" {drawn:,} of them from {granted:,} granted;"
        f" while charging: {grants_during} of {len(grants)} grants,"
        f" {events_during} of {len(events)} webhook events"
    )


# 20 s more on PostgreSQL: there it is a long variant (tests/ledger/test_postgres_races.py
# and the process tests of tests/ledger run several processes on PostgreSQL every time).
@pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)
async def test_bots_sidecar_and_cli_share_one_database(
    tmp_path: Path, database: str, fake_openai: Any
) -> None:
    # Two workers ask for about 2 x (8 x 5,000 + 40 x 330) = 106,000 tokens; the account
    # has 50,000, 10,000 granted before and 9 x 2,000 granted while they work.
    case = Case(
        workers=2,
        chats=40,
        avatars=8,
        concurrency=4,
        opening_grant=10_000,
        grants=9,
        grant_amount=2_000,
        subscriptions=8,
        allowance=50_000,
    )
    await _run(tmp_path, database, fake_openai, case)


@pytest.mark.slow
async def test_bots_sidecar_and_cli_share_one_database_longer(
    tmp_path: Path, database: str, fake_openai: Any
) -> None:
    # Three workers ask for about 3 x (60 x 5,000 + 400 x 330) = 1,300,000 tokens; the
    # account has 900,000, 50,000 granted before and 60 x 3,000 granted while they work.
    case = Case(
        workers=3,
        chats=400,
        avatars=60,
        concurrency=8,
        opening_grant=50_000,
        grants=60,
        grant_amount=3_000,
        subscriptions=60,
        allowance=900_000,
    )
    await _run(tmp_path, database, fake_openai, case)
