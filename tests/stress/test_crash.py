"""Crash suite: SIGKILL at random moments, then start-up leaves the books exact.

Metered work (avatar generations, document uploads, chats) runs in a child process
(tests/stress/crash_child.py) through the real services and cogs, against the fake
OpenAI server of this process. Each round kills the child at a moment chosen from the
seed, one of:

- before_call: the op's hold is taken (the meter says so), its request not yet sent;
- in_flight: the fake has received the op's request and not answered it;
- completed: the fake has built its answer (usage counted) but not sent it;
- after_response: a random 0-30 ms after the fake completed it (the answer in transit,
  being read, the image checked, the commit under way);
- commit: a random 0-5 ms after the meter says it is deducting (the write transaction);
- random: after a random number of the child's progress lines plus a random delay.

Then the database is reopened the way the bot starts (`Services.open`, which sweeps the
holds of dead processes) and checked: `verify()` is clean, nothing stays held, every
charge belongs to one op whose calls the fake completed and equals what the fake
reported, every stored result (avatar, document with its chunks, conversation turns) has
exactly its charge and every charge its result, and every reply the member saw was
charged. A call that completed at the fake but whose process died before committing is
released, not charged: the result was never delivered. Rounds continue on the same
database, so damage would accumulate.

The webhook sidecar (`python -m bot webhooks`) is killed the same way in the middle of a
burst of signed events, restarted, and sent every event again (LemonSqueezy's retry):
each lands exactly once.

The seed is printed; `CRASH_SEED=<n>` replays a run's plans and kill points (the exact
instant of a delayed kill still depends on timing). `--slow` runs the long variants.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from bot.config import Config, OpenAISettings, StorageSettings
from bot.core.metering import Actor
from bot.services import Services
from ledger import Ledger
from tests.billing.payloads import (
    PACK_TOKENS,
    PACK_VARIANT,
    PRO_VARIANTS,
    SECRET,
    STORE_ID,
    encode,
    invoice,
    order,
    sign,
    subscription,
)
from tests.children import bot_env
from tests.fakes.openai_server import FakeOpenAI, Recorded
from tests.stores import execute, query
from tests.stress.crash_child import USER_BASE

CHILD = Path(__file__).with_name("crash_child.py")
GUILD = 4242
OWNER = 1
ACCOUNT = f"guild:{GUILD}"
AGENTS = ("Nova", "Orion", "Vega")
AVATAR_COST = 5000  # costs.avatar_generation's default: a flat price
MODES = ("before_call", "in_flight", "completed", "after_response", "commit", "random")
KINDS = ("avatar", "document", "chat", "big_document")
KIND_WEIGHTS = (3, 3, 4, 0.6)
# The endpoint whose request decides an op's fate (a chat may embed its question first).
MAIN_ENDPOINT = {
    "avatar": "images",
    "document": "embeddings",
    "big_document": "embeddings",
    "chat": "chat",
}
# What each op sends at most; a charged op sent all of it (a chat embeds its question
# only once its agent has documents). A big document is embedded in two requests.
CALLS: dict[str, Counter[str]] = {
    "avatar": Counter(images=1),
    "document": Counter(embeddings=1),
    "big_document": Counter(embeddings=2),
    "chat": Counter(chat=1, embeddings=1),
}
OPERATION = {
    "avatar": "avatar_generation",
    "document": "document_upload",
    "big_document": "document_upload",
    "chat": "chat",
}
WORKERS = 2
OPS_PER_WORKER = 4
TAG = re.compile(r"op#(\d+)#")
# Generous bound for a child that stopped answering: a hang fails instead of blocking CI.
ROUND_TIMEOUT = 60


# PostgreSQL doubles the suite's longest cases: there they are long variants (the SIGKILL
# case of tests/ledger/test_postgres_races.py runs every time).
ON_BOTH = pytest.mark.parametrize(
    "database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)], indirect=True
)


def crash_seed() -> int:
    given = os.environ.get("CRASH_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"crash suite seed: {seed} (replay with CRASH_SEED={seed})")
    return seed


def child_env(database: str, data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return bot_env(BOT_STORAGE__DATABASE=database, BOT_STORAGE__DATA_DIR=str(data_dir), **extra)


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Children:
    """Every child process of one test, each killed and reaped in the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[asyncio.subprocess.Process] = []
        self.files: list[IO[bytes]] = []

    async def start(
        self, args: list[str], env: dict[str, str]
    ) -> tuple[asyncio.subprocess.Process, Path]:
        # Standard error goes to a file: nobody reads it while the child runs, and a pipe
        # that fills up would block the child.
        err_path = self.folder / f"child{len(self.procs)}.err"
        err = err_path.open("wb")
        self.files.append(err)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=self.folder,
            env=env,
        )
        self.procs.append(proc)
        return proc, err_path

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        for file in self.files:
            file.close()


@pytest.fixture
async def children(tmp_path: Path) -> AsyncIterator[Children]:
    kids = Children(tmp_path)
    try:
        yield kids
    finally:
        await kids.close()


# ---- metered work ------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    n: int
    kind: str
    agent: str


@dataclass
class RoundPlan:
    number: int
    mode: str
    workers: list[list[Op]]
    target: Op
    lines: int  # for "random": kill after this many progress lines
    delay: float  # seconds between the trigger and the kill
    # The bot comes back with the dead one's pid, on the same host: PID 1 of a container
    # restarted in place (docker restart, a Kubernetes container restart) does.
    same_pid: bool = False

    def ops(self) -> list[Op]:
        return [op for ops in self.workers for op in ops]

    def as_json(self) -> str:
        workers = [[op.__dict__ for op in ops] for ops in self.workers]
        return json.dumps({"guild": GUILD, "owner": OWNER, "workers": workers})


def plan_rounds(seed: int, rounds: int) -> list[RoundPlan]:
    rng = random.Random(seed)
    modes: list[str] = []
    while len(modes) < rounds:  # every block of six rounds covers every kill point
        block = list(MODES)
        rng.shuffle(block)
        modes += block
    plans = []
    for number in range(rounds):
        workers = [
            [
                Op(
                    number * 100 + w * OPS_PER_WORKER + i,
                    rng.choices(KINDS, weights=KIND_WEIGHTS)[0],
                    rng.choice(AGENTS),
                )
                for i in range(OPS_PER_WORKER)
            ]
            for w in range(WORKERS)
        ]
        mode = modes[number]
        delay = {"after_response": 0.03, "commit": 0.005, "random": 0.02}.get(mode, 0.0)
        plans.append(
            RoundPlan(
                number,
                mode,
                workers,
                # Not a worker's last op: the child is still busy at the planned moment.
                target=rng.choice([op for ops in workers for op in ops[:-1]]),
                lines=rng.randint(1, 30),
                delay=rng.uniform(0, delay),
                # Every in-flight kill among them: it always leaves a hold pending.
                same_pid=number % 2 == 1 or mode == "in_flight",
            )
        )
    return plans


def op_of(record: Recorded) -> int | None:
    """The op whose request this is, from the mark it put in the request."""
    body = record.body
    if record.endpoint == "images":
        text = str(body.get("prompt", ""))
    elif record.endpoint == "chat":
        messages = body.get("messages") or [{}]
        text = str(messages[-1].get("content", ""))  # earlier turns carry older marks
    else:
        inputs = body.get("input", "")
        text = " ".join(map(str, inputs)) if isinstance(inputs, list) else str(inputs)
    found = TAG.search(text)
    return int(found.group(1)) if found else None


def completed(record: Recorded) -> bool:
    """The fake built a successful answer (and counted its usage)."""
    return record.failed is None and bool(record.usage)


@dataclass
class Killer:
    """Watches one round (the child's lines and the fake's requests) and kills the child
    at the planned moment. `at_kill` is what the fake had completed at that instant."""

    proc: asyncio.subprocess.Process
    plan: RoundPlan
    fake: FakeOpenAI
    killed: bool = False
    trigger: str = ""
    at_kill: set[int] = field(default_factory=set)
    lines: int = 0
    timer: asyncio.TimerHandle | None = None

    def kill(self, why: str) -> None:
        # Once only: a second send_signal polls, and so reaps, the dead child before
        # asyncio's watcher does, which then reports an exit code of 255.
        if self.killed or self.proc.returncode is not None:
            return
        self.killed = True
        self.trigger = why
        self.at_kill = {id(r) for r in self.fake.requests if completed(r)}
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    def fire(self, why: str) -> None:
        if self.killed or self.timer is not None:
            return
        if self.plan.delay <= 0:
            self.kill(why)
        else:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.plan.delay, self.kill, why)

    def on_request(self, phase: str, record: Recorded) -> None:
        target = self.plan.target
        if record.endpoint != MAIN_ENDPOINT[target.kind] or op_of(record) != target.n:
            return
        mode = self.plan.mode
        if mode == "in_flight" and phase == "received":
            self.kill("the fake received the request")
        elif mode == "completed" and phase == "completed":
            self.kill("the fake built its answer")
        elif mode == "after_response" and phase == "completed":
            self.fire(f"{self.plan.delay * 1000:.1f} ms after the fake's answer")

    def on_line(self, words: list[str]) -> None:
        self.lines += 1
        mode, target = self.plan.mode, self.plan.target
        if words[0] == "finished" and self.timer is None:
            # The child waits to be killed once its ops are done: a planned moment that
            # never came (or came too late) still ends the round with a SIGKILL.
            self.kill("after every op")
            return
        if words[0] == "log" and int(words[1]) == target.n:
            message = " ".join(words[2:])
            if mode == "before_call" and "after holding" in message:
                self.kill("the hold was taken")
            elif mode == "commit" and "Deducting" in message:
                self.fire(f"{self.plan.delay * 1000:.1f} ms into the deduction")
        if mode == "random" and self.lines >= self.plan.lines:
            self.fire(f"{self.plan.delay * 1000:.1f} ms after line {self.lines}")

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


@dataclass
class Figures:
    rounds: int = 0
    killed: int = 0
    modes: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    stored: Counter[str] = field(default_factory=Counter)  # charged ops by kind
    released_at_start: int = 0
    pending_at_kill: int = 0  # holds the dead child left pending, summed over rounds
    same_pid: int = 0  # rounds restarted with the dead child's pid
    same_pid_pending: int = 0  # the holds those rounds left pending
    completed_uncharged: int = 0  # every call of the op completed at the fake; no charge
    orphan_files: int = 0

    def line(self, seed: int) -> str:
        return (
            f"crash suite (seed {seed}): {self.rounds} rounds survived, {self.killed} kills;"
            f" kill points {dict(sorted(self.modes.items()))};"
            f" ops {dict(sorted(self.outcomes.items()))};"
            f" charged and stored {dict(sorted(self.stored.items()))};"
            f" completed at the fake but released, not charged {self.completed_uncharged};"
            f" holds pending at the kill {self.pending_at_kill}, released at start-up"
            f" {self.released_at_start} ({self.same_pid} rounds restarted with the dead pid,"
            f" {self.same_pid_pending} holds);"
            f" avatar files no agent points to {self.orphan_files}"
        )


@dataclass
class ChildReport:
    begun: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    finished: bool = False


async def run_round(
    proc: asyncio.subprocess.Process, plan: RoundPlan, fake: FakeOpenAI
) -> tuple[Killer, ChildReport]:
    assert proc.stdin is not None and proc.stdout is not None
    killer = Killer(proc, plan, fake)
    report = ChildReport()
    fake.hook = killer.on_request
    try:
        proc.stdin.write(plan.as_json().encode() + b"\n")
        await proc.stdin.drain()
        async with asyncio.timeout(ROUND_TIMEOUT):
            # Read to the end even after the kill: what the child wrote before it died
            # (a "done" line) is still in the pipe, and counts.
            async for raw in proc.stdout:
                words = raw.decode().split()
                if not words:
                    continue
                if words[0] == "begin":
                    report.begun.add(int(words[1]))
                elif words[0] == "done":
                    if words[2] == "ok":
                        report.delivered.add(int(words[1]))
                    else:
                        report.errors.append(" ".join(words))
                elif words[0] == "finished":
                    report.finished = True
                if words[0] != "ready":
                    killer.on_line(words)
            await proc.wait()
    finally:
        fake.hook = None
        killer.cancel()
    return killer, report


def make_config(tmp_path: Path, database: str, fake: FakeOpenAI) -> Config:
    return Config(
        storage=StorageSettings(database=database, data_dir=str(tmp_path / "data")),
        openai=OpenAISettings(base_url=fake.base_url, max_retries=0),
    )


async def scalar(services: Services, sql: str, *args: Any) -> Any:
    rows = await services.ledger.store.reader.execute_fetchall(sql, args)
    return rows[0][0]


async def check_books(
    services: Services,
    fake: FakeOpenAI,
    ops: dict[int, Op],
    delivered: set[int],
    killed_at: dict[int, set[int]],
    begun: set[int],
    figures: Figures,
) -> list[str]:
    """Every invariant of the module docstring, for every op of every round so far."""
    figures.outcomes = Counter()  # recounted from scratch: every op, every round
    figures.stored = Counter()
    figures.completed_uncharged = 0
    problems = [f"verify: {v}" for v in await services.ledger.verify()]
    balance = await services.ledger.balance(ACCOUNT)
    if balance.tokens_held:
        problems.append(f"{balance.tokens_held} tokens still held after start-up")
    pending = await scalar(services, "SELECT COUNT(*) FROM holds WHERE status = 'pending'")
    if pending:
        problems.append(f"{pending} holds still pending after start-up")
    reader = services.ledger.store.reader

    charges: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for row in await reader.execute_fetchall(
        "SELECT user_id, operation_type, tokens_used FROM token_usage WHERE status = 'charged'"
    ):
        n = int(row["user_id"]) - USER_BASE
        if n not in ops:
            problems.append(f"a charge of {row['tokens_used']} by no op (user {row['user_id']})")
            continue
        charges[n].append((row["operation_type"], row["tokens_used"]))
    if sum(t for c in charges.values() for _, t in c) != balance.tokens_used:
        problems.append(f"tokens_used {balance.tokens_used} is not the sum of the ops' charges")

    requests: dict[int, list[Recorded]] = defaultdict(list)
    for record in fake.requests:
        n = op_of(record)
        if n is None or n not in ops:
            problems.append(f"a request to {record.endpoint} from no op")
            continue
        requests[n].append(record)

    turns: dict[int, int] = Counter()
    rows = await reader.execute_fetchall(
        "SELECT id, conversation_id, role, content FROM turns ORDER BY id"
    )
    for i, row in enumerate(rows):
        if row["role"] != "user":
            continue
        found = TAG.search(row["content"])
        follows = rows[i + 1] if i + 1 < len(rows) else None
        if (
            found is None
            or follows is None
            or follows["role"] != "assistant"
            or follows["conversation_id"] != row["conversation_id"]
        ):
            problems.append(f"turn {row['id']} is not an op's question followed by its answer")
            continue
        turns[int(found.group(1))] += 1

    documents: dict[int, list[Any]] = defaultdict(list)
    for row in await reader.execute_fetchall(
        "SELECT d.id, d.uploader_id, d.chunks, d.tokens,"
        " (SELECT COUNT(*) FROM chunks c WHERE c.document_id = d.id) AS stored FROM documents d"
    ):
        documents[int(row["uploader_id"]) - USER_BASE].append(row)

    avatar_charges: Counter[str] = Counter()
    for n, op in ops.items():
        mine = charges.get(n, [])
        calls = requests.get(n, [])
        done = [r for r in calls if completed(r)]
        if len(mine) > 1:
            problems.append(f"op {n} ({op.kind}) charged {len(mine)} times: {mine}")
        sent = Counter(r.endpoint for r in calls)
        if sent - CALLS[op.kind]:
            problems.append(f"op {n} ({op.kind}) sent more than it should: {dict(sent)}")
        stored = turns[n] if op.kind == "chat" else len(documents.get(n, []))
        if mine:
            operation, charged = mine[0]
            main = MAIN_ENDPOINT[op.kind]
            if (
                operation != OPERATION[op.kind]
                or len(done) != len(calls)
                or sent[main] != CALLS[op.kind][main]
            ):
                problems.append(
                    f"op {n} ({op.kind}) charged as {operation} without its completed calls"
                    f" ({dict(sent)} sent, {len(done)} completed)"
                )
            expected = (
                AVATAR_COST if op.kind == "avatar" else sum(r.usage["total_tokens"] for r in done)
            )
            if charged != expected:
                problems.append(
                    f"op {n} ({op.kind}) charged {charged}, the fake reported {expected}"
                )
            if op.kind == "avatar":
                avatar_charges[op.agent] += 1
            elif stored != 1:
                problems.append(f"op {n} ({op.kind}) charged {charged} but stored {stored} results")
            for doc in documents.get(n, []):
                if doc["tokens"] != charged or doc["chunks"] != doc["stored"] or not doc["stored"]:
                    problems.append(
                        f"op {n}: document {doc['id']} of {doc['tokens']} tokens and"
                        f" {doc['stored']} of {doc['chunks']} chunks, charged {charged}"
                    )
            figures.outcomes["charged, delivered" if n in delivered else "charged, reply lost"] += 1
            figures.stored[op.kind] += 1
            continue
        if n in delivered:
            problems.append(f"op {n} ({op.kind}) was delivered to the member but never charged")
        if op.kind != "avatar" and stored:
            problems.append(f"op {n} ({op.kind}) stored {stored} results and was never charged")
        # Not charged: why (at the moment of the kill of its round).
        main = MAIN_ENDPOINT[op.kind]
        answered = [r for r in calls if id(r) in killed_at.get(n // 100, set())]
        if n not in begun:
            outcome = "never started"
        elif not calls:
            outcome = "killed before its call"
        elif Counter(r.endpoint for r in answered)[main] == CALLS[op.kind][main]:
            outcome = "completed at the fake, released"
        elif answered:
            outcome = "killed between its calls, released"
        else:
            outcome = "killed in flight, released"
        figures.outcomes[outcome] += 1
        if sent[main] == CALLS[op.kind][main] and len(done) == len(calls):
            figures.completed_uncharged += 1

    referenced: set[str] = set()
    for row in await reader.execute_fetchall(
        "SELECT name, avatar_version, avatar_path FROM agents"
    ):
        if row["avatar_version"] != avatar_charges[row["name"]]:
            problems.append(
                f"agent {row['name']} has avatar version {row['avatar_version']}"
                f" for {avatar_charges[row['name']]} charged generations"
            )
        if row["avatar_path"]:
            referenced.add(row["avatar_path"])
            if not Path(row["avatar_path"]).is_file():
                problems.append(f"agent {row['name']}'s avatar file is missing")
    folder = services.config.data_path("avatars")
    files = {str(p) for p in folder.glob("*")} if folder.is_dir() else set()
    # A generation killed after writing its image but before its commit (or before it
    # deleted the image it replaced) leaves a file behind: disk, not money. Counted and
    # reported, not failed.
    figures.orphan_files = len(files - referenced)
    return problems


async def prepare(config: Config) -> None:
    """The account on Pro (room for every round) with three agents."""
    services = await Services.open(config)
    try:
        actor = Actor(ACCOUNT, OWNER, GUILD, can_manage=True)
        await services.ledger.set_plan(ACCOUNT, "pro", actor="test", reason="crash suite")
        for name in AGENTS:
            await services.agents.create(actor, name, f"You are {name}, a patient astronomer.")
    finally:
        await services.close()


async def crash_rounds(
    rounds: int, tmp_path: Path, database: str, fake: FakeOpenAI, children: Children
) -> Figures:
    seed = crash_seed()
    config = make_config(tmp_path, database, fake)
    await prepare(config)
    env = child_env(
        database,
        Path(config.storage.data_dir),
        {
            "BOT_OPENAI__BASE_URL": fake.base_url,
            "BOT_OPENAI__MAX_RETRIES": "0",  # one request per call: a retry is not a crash
            "OPENAI_API_KEY": "any",
        },
    )
    figures = Figures()
    ops: dict[int, Op] = {}
    delivered: set[int] = set()
    begun: set[int] = set()
    killed_at: dict[int, set[int]] = {}
    # The next round's child imports while this round runs; it opens the database only
    # once it reads its plan, after the last one's books were checked.
    spare = await children.start([str(CHILD)], env)
    for plan in plan_rounds(seed, rounds):
        proc, err_path = spare
        if plan.number + 1 < rounds:
            spare = await children.start([str(CHILD)], env)
        ops.update({op.n: op for op in plan.ops()})
        killer, report = await run_round(proc, plan, fake)
        where = (
            f"seed {seed} round {plan.number} ({plan.mode}, target op {plan.target.n}"
            f" {plan.target.kind}; {killer.trigger or 'not killed'})"
        )
        assert killer.killed and proc.returncode == -signal.SIGKILL, (
            f"{where}: exit code {proc.returncode}\n{tail(err_path)}"
        )
        figures.killed += 1
        if killer.trigger != "after every op":
            figures.modes[plan.mode] += 1
        killed_at[plan.number] = killer.at_kill
        delivered |= report.delivered
        begun |= report.begun
        assert not report.errors, f"{where}: an error reached a member: {report.errors}"

        pending = "SELECT COUNT(*) FROM holds WHERE status = 'pending'"
        ((left,),) = await query(database, pending)
        figures.pending_at_kill += left
        if plan.same_pid:
            # The restarted bot (this process) has the pid the dead one had.
            await execute(
                database, "UPDATE instances SET pid = ? WHERE pid = ?", (os.getpid(), proc.pid)
            )
            figures.same_pid += 1
            figures.same_pid_pending += left
        released = "SELECT COUNT(*) FROM holds WHERE reason = 'its process stopped'"
        services = await Services.open(config)  # as the bot starts: sweeps dead processes
        try:
            figures.released_at_start = await scalar(services, released)
            problems = await check_books(services, fake, ops, delivered, killed_at, begun, figures)
        finally:
            await services.close()
        assert not problems, f"{where}:\n" + "\n".join(problems) + f"\n{tail(err_path)}"
        figures.rounds += 1
    print(figures.line(seed))
    return figures


@ON_BOTH
async def test_metered_work_survives_sigkill(
    tmp_path: Path, database: str, fake_openai: FakeOpenAI, children: Children
) -> None:
    # Six rounds: one block of plan_rounds, so each kill point once (an in-flight kill, on
    # the dead child's pid, among them); the long variant runs eight blocks.
    figures = await crash_rounds(len(MODES), tmp_path, database, fake_openai, children)
    assert figures.rounds == len(MODES)
    assert set(figures.modes) == set(MODES)  # every planned kill point was reached
    # Regression: a bot restarted with its dead predecessor's pid (PID 1 of a container
    # restarted in place) took the dead instance for itself and left its holds pending.
    assert figures.same_pid_pending > 0


@pytest.mark.slow
async def test_metered_work_survives_sigkill_long(
    tmp_path: Path, database: str, fake_openai: FakeOpenAI, children: Children
) -> None:
    figures = await crash_rounds(48, tmp_path, database, fake_openai, children)
    assert figures.rounds == 48


# ---- the webhook sidecar -----------------------------------------------------------------

ACCOUNTS_PER_ROUND = 3


@dataclass(frozen=True)
class Event:
    account: str
    name: str
    body: bytes


def round_events(number: int, renews_at: str) -> list[list[Event]]:
    """Per account: its subscription's creation, its first payment, then a token pack."""
    sequences = []
    for j in range(ACCOUNTS_PER_ROUND):
        account = f"guild:{9000 + number * 10 + j}"
        sub_id = str(7000 + number * 10 + j)
        created = subscription(
            "subscription_created",
            sub_id=sub_id,
            account_id=account,
            renews_at=renews_at,
            updated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        )
        paid = invoice(
            "subscription_payment_success",
            invoice_id=str(8000 + number * 10 + j),
            sub_id=sub_id,
            account_id=account,
        )
        pack = order(
            "order_created",
            order_id=str(9000 + number * 10 + j),
            variant_id=PACK_VARIANT,
            account_id=account,
        )
        sequences.append(
            [
                Event(account, "subscription_created", encode(created)),
                Event(account, "subscription_payment_success", encode(paid)),
                Event(account, "order_created", encode(pack)),
            ]
        )
    return sequences


async def start_sidecar(
    children: Children, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    proc, err_path = await children.start(["-m", "bot", "webhooks"], env)
    assert proc.stdout is not None
    async with asyncio.timeout(ROUND_TIMEOUT):
        line = (await proc.stdout.readline()).decode()
    assert line.startswith("listening on http://127.0.0.1:"), tail(err_path)
    return proc, line.split()[-1].rstrip("/") + "/webhooks/lemonsqueezy"


async def post(session: aiohttp.ClientSession, url: str, event: Event) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "X-Signature": sign(event.body)}
    async with session.post(url, data=event.body, headers=headers) as response:
        data = await response.json()
        return response.status, str(data.get("outcome"))


async def deliver_until_killed(
    session: aiohttp.ClientSession,
    url: str,
    victim: asyncio.subprocess.Process,
    sequences: list[list[Event]],
    answers: int,
    delay: float,
) -> dict[bytes, str]:
    """Sends each account's events in order, all accounts at once, and kills the sidecar
    `delay` seconds after its `answers`-th answer. Returns the answers it gave."""
    answered: dict[bytes, str] = {}
    loop = asyncio.get_running_loop()
    timer: list[asyncio.TimerHandle] = []
    killed: list[bool] = []

    def kill() -> None:
        # Once only: a second send_signal polls, and so reaps, the dead child before
        # asyncio's watcher does, which then reports an exit code of 255.
        if not killed and victim.returncode is None:
            killed.append(True)
            with contextlib.suppress(ProcessLookupError):
                victim.send_signal(signal.SIGKILL)

    def answer_seen() -> None:
        if len(answered) == answers and not timer:
            timer.append(loop.call_later(delay, kill))

    async def deliver(events: list[Event]) -> None:
        for event in events:
            try:
                status, outcome = await post(session, url, event)
            except (aiohttp.ClientError, json.JSONDecodeError):
                return  # the sidecar died: LemonSqueezy retries later
            answered[event.body] = f"{status} {outcome}".removeprefix("200 ")
            answer_seen()

    answer_seen()
    try:
        await asyncio.gather(*(deliver(events) for events in sequences))
        kill()  # every event was answered before the planned moment
        await victim.wait()
    finally:
        for handle in timer:
            handle.cancel()
    return answered


async def webhook_rounds(
    rounds: int, tmp_path: Path, database: str, children: Children
) -> Counter[str]:
    seed = crash_seed()
    rng = random.Random(seed)
    env = child_env(
        database,
        tmp_path / "data",
        {
            "BOT_WEBHOOKS__PORT": "0",
            "LEMONSQUEEZY_WEBHOOK_SECRET": SECRET,
            "BOT_LEMONSQUEEZY__STORE_ID": STORE_ID,
            "BOT_LEMONSQUEEZY__PRO_VARIANT_IDS": json.dumps(list(PRO_VARIANTS)),
            "BOT_LEMONSQUEEZY__PACKS": json.dumps({PACK_VARIANT: PACK_TOKENS}),
        },
    )
    renews = (datetime.now(UTC) + timedelta(days=20)).replace(microsecond=0)
    renews_at = renews.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    figures: Counter[str] = Counter()
    sent: list[Event] = []
    order: list[bool] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        victim, url = await start_sidecar(children, env)
        for number in range(rounds):
            sequences = round_events(number, renews_at)
            async with await Ledger.open(database) as ledger:
                for events in sequences:  # usage before the payment: a fresh period shows
                    hold = await ledger.reserve(events[0].account, 1234, "chat")
                    await ledger.commit(hold, 1234)

            # Each account's events in order; the kill comes after `answers` answers
            # plus a random delay of a few ms (an event takes about one fsync), or in one
            # round of each three right after the first requests went out.
            if number % 3 == 0:
                order = [True, False, False]
                rng.shuffle(order)
            if order[number % 3]:
                answers, delay = 0, rng.uniform(0, 0.001)
            else:
                answers, delay = rng.randrange(3 * ACCOUNTS_PER_ROUND), rng.uniform(0, 0.006)
            answered = await deliver_until_killed(session, url, victim, sequences, answers, delay)
            assert victim.returncode == -signal.SIGKILL, (seed, number)
            assert all(outcome == "applied" for outcome in answered.values()), (
                f"seed {seed} round {number}: first deliveries answered {answered.values()}"
            )

            victim, url = await start_sidecar(children, env)
            for events in sequences:  # the retry: every event again, in order
                for event in events:
                    status, outcome = await post(session, url, event)
                    assert status == 200 and outcome in {"applied", "duplicate"}, (
                        f"seed {seed} round {number}: {event.name} answered {status} {outcome}"
                    )
                    if event.body in answered:
                        assert outcome == "duplicate", (seed, number, event.name)
                        figures["answered before the kill"] += 1
                    elif outcome == "duplicate":
                        figures["applied, answer lost"] += 1
                    else:
                        figures["not applied, applied by the retry"] += 1
                    sent.append(event)
            figures["rounds"] += 1
            figures[
                "killed after the first requests" if order[number % 3] else "killed mid-burst"
            ] += 1
            await check_webhooks(database, sent, renews, f"seed {seed} round {number}")

        victim.send_signal(signal.SIGTERM)
        assert await victim.wait() == 0
    print(f"webhook crash rounds (seed {seed}): {dict(sorted(figures.items()))}")
    return figures


async def check_webhooks(database: str, sent: list[Event], renews: datetime, where: str) -> None:
    """Each event recorded once and applied once; each account Pro with one fresh period."""
    async with await Ledger.open(database) as ledger:
        await ledger.sweep()
        assert await ledger.verify() == [], where
        reader = ledger.store.reader
        rows = await reader.execute_fetchall("SELECT body_sha256, outcome FROM webhook_events")
        recorded = Counter((r["body_sha256"], r["outcome"]) for r in rows)
        expected = Counter((hashlib.sha256(e.body).hexdigest(), "applied") for e in sent)
        assert recorded == expected, where
        for account in sorted({e.account for e in sent}):
            (row,) = await reader.execute_fetchall(
                "SELECT plan_type, tokens_used, period_seq, period_end, bonus_tokens"
                " FROM usage_limits WHERE account_id = ?",
                (account,),
            )
            assert row["bonus_tokens"] == PACK_TOKENS, (where, account)  # the pack, once
            # Created with the usage (period 1); the payment's fresh period is period 2.
            assert (row["plan_type"], row["tokens_used"], row["period_seq"]) == ("pro", 0, 2), (
                where,
                account,
                dict(row),
            )
            balance = await ledger.balance(account)
            assert balance.period_end == renews, (where, account, balance)
            # One plan change and one fresh period, whatever was killed and retried.
            audit = await reader.execute_fetchall(
                "SELECT operation_type FROM token_usage WHERE account_id = ?"
                " AND operation_type IN ('plan_change', 'period_reset')",
                (account,),
            )
            kinds = sorted(r["operation_type"] for r in audit)
            assert kinds == ["period_reset", "plan_change"], (where, kinds)
            packs = await reader.execute_fetchall(
                "SELECT COUNT(*) FROM token_usage WHERE account_id = ?"
                " AND operation_type = 'pack_grant'",
                (account,),
            )
            assert packs[0][0] == 1, (where, account)


async def test_webhook_sidecar_killed_mid_event(
    tmp_path: Path, database: str, children: Children
) -> None:
    figures = await webhook_rounds(4, tmp_path, database, children)
    assert figures["rounds"] == 4


@pytest.mark.slow
async def test_webhook_sidecar_killed_mid_event_long(
    tmp_path: Path, database: str, children: Children
) -> None:
    figures = await webhook_rounds(20, tmp_path, database, children)
    assert figures["rounds"] == 20
