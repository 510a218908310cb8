"""Signed LemonSqueezy webhook events per second through the real sidecar, over real HTTP.

The server (this process) is `bot.http.sidecar.build_app` on a real ledger file in a temp
dir, behind aiohttp's own server on 127.0.0.1. The load comes from a second process, so
that the client's own work does not share the server's event loop (on a 2-core machine
that alone would halve the figure). The events are `subscription_updated` snapshots for
many subscriptions with a share of exact replays, sent by 1 and by 20 concurrent clients
over keep-alive connections.

In the same run, the same bodies go to a bare aiohttp handler that only reads the body
and answers 200: the HTTP stack's (and this client's) own limit. The ratio says how much
of that limit is left once the sidecar verifies, parses and commits each event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import sqlite3
import tempfile
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector, web
from pydantic import SecretStr

from bench.report import Figure, cli, median, percentile
from bot.billing.lemonsqueezy.webhook import signature
from bot.config import Config, LemonSqueezySettings, Secrets, StorageSettings
from bot.http.sidecar import build_app
from bot.runtime import open_ledger

BENCH = "webhooks"
SECRET = "whsec-bench-signing-secret"
PATH = "/webhooks/lemonsqueezy"
CLIENTS = (1, 20)
# Cycled per subscription: some snapshots change the plan (pro <-> free), most do not.
STATUSES = ("active", "active", "past_due", "cancelled", "expired", "active")

Body = tuple[bytes, str]  # (raw body, X-Signature)


# ---- payloads ---------------------------------------------------------------------------
# A small builder of our own: the bench must run from an installed checkout, without tests/.


def snapshot(sub_id: int, version: int) -> bytes:
    """A `subscription_updated` body in LemonSqueezy's documented shape."""
    status = STATUSES[version % len(STATUSES)]
    # Each version is a newer snapshot: the sidecar applies it, never ignores it as stale.
    updated = f"2026-11-24T10:{version // 60 % 60:02d}:{version % 60:02d}.000000Z"
    payload = {
        "meta": {
            "event_name": "subscription_updated",
            "test_mode": False,
            "webhook_id": f"wh-{sub_id}-{version}",
            "custom_data": {"account_id": f"guild:{1_000_000 + sub_id}", "user_id": str(sub_id)},
        },
        "data": {
            "type": "subscriptions",
            "id": str(sub_id),
            "attributes": {
                "store_id": 1,
                "customer_id": sub_id,
                "order_id": sub_id,
                "order_item_id": sub_id,
                "product_id": 3,
                "variant_id": 4,
                "product_name": "Pro",
                "variant_name": "Monthly",
                "user_name": "Ada",
                "user_email": f"user{sub_id}@example.com",
                "status": status,
                "status_formatted": status.replace("_", " ").title(),
                "card_brand": "visa",
                "card_last_four": "4242",
                "pause": None,
                "cancelled": status == "cancelled",
                "trial_ends_at": None,
                "billing_anchor": 24,
                "renews_at": "2026-12-24T10:00:00.000000Z",
                "ends_at": "2099-01-01T00:00:00.000000Z" if status == "cancelled" else None,
                "created_at": "2026-11-24T09:00:00.000000Z",
                "updated_at": updated,
                "test_mode": False,
                "urls": {
                    "update_payment_method": f"https://shop.example/billing/{sub_id}/update",
                    "customer_portal": f"https://shop.example/billing?expires={sub_id}",
                },
            },
        },
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def events(count: int, subscriptions: int, replay_share: float, seed: int = 6) -> list[Body]:
    """Snapshots round-robin over `subscriptions` (so 20 clients never race one
    subscription), and exact replays of bodies sent at least 100 events earlier (so the
    original is committed before its replay arrives: a replay is a duplicate, as in life)."""
    rng = random.Random(seed)
    sent: list[Body] = []
    versions = [0] * subscriptions
    turn = 0
    while len(sent) < count:
        if len(sent) > 100 and rng.random() < replay_share:
            sent.append(sent[rng.randrange(len(sent) - 100)])
            continue
        sub = turn % subscriptions
        turn += 1
        body = snapshot(sub, versions[sub])
        versions[sub] += 1
        sent.append((body, signature(SECRET, body)))
    return sent


# ---- the load: a separate process -------------------------------------------------------


async def _drive(port: int, bodies: list[Body], concurrency: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}{PATH}"
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()
    async with ClientSession(connector=TCPConnector(limit=concurrency)) as session:

        async def warm() -> None:  # open the keep-alive connections before the clock starts
            async with session.get(f"http://127.0.0.1:{port}/warm-up") as response:
                await response.read()

        await asyncio.gather(*(warm() for _ in range(concurrency)))
        work = iter(bodies)  # shared: each body is taken by exactly one client

        async def client() -> None:
            for body, signature in work:
                headers = {"Content-Type": "application/json", "X-Signature": signature}
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    answer = await response.read()
                latencies.append(time.perf_counter() - started)
                statuses[response.status] += 1
                outcomes[json.loads(answer).get("outcome", "")] += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        took = time.perf_counter() - started
    return {
        "seconds": took,
        "latencies": latencies,
        "statuses": dict(statuses),
        "outcomes": dict(outcomes),
    }


def _client_process(bodies: list[Body], pipe: Connection) -> None:
    """Runs in the child: one load per (port, concurrency) asked for, until None."""
    while (job := pipe.recv()) is not None:
        port, concurrency = job
        pipe.send(asyncio.run(_drive(port, bodies, concurrency)))


# ---- the servers: this process ----------------------------------------------------------


def bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text='{"ok":true}', content_type="application/json")

    app = web.Application()
    app.router.add_post(PATH, handler)
    return app


async def _load(app: web.Application, pipe: Connection, concurrency: int) -> dict[str, Any]:
    runner = web.AppRunner(app, access_log=None)  # as start_sidecar runs it
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        pipe.send((port, concurrency))
        # The server keeps serving on this loop while a thread waits for the child.
        result: dict[str, Any] = await asyncio.to_thread(pipe.recv)
    finally:
        await runner.cleanup()
    if set(result["statuses"]) != {200}:
        raise RuntimeError(f"answers other than 200: {result['statuses']}")
    return result


async def _measure(pipe: Connection, folder: Path, count: int) -> list[Figure]:
    figures: list[Figure] = []
    for concurrency in CLIENTS:
        bare = await _load(bare_app(), pipe, concurrency)
        config = Config(
            storage=StorageSettings(
                database=str(folder / f"sidecar-{concurrency}.db"), data_dir=str(folder / "data")
            ),
            lemonsqueezy=LemonSqueezySettings(store_id="1", pro_variant_ids=["4"]),
            secrets=Secrets(lemonsqueezy_webhook_secret=SecretStr(SECRET), _env_file=None),  # type: ignore[call-arg]
        )
        ledger = await open_ledger(config, "bench")
        try:
            real = await _load(build_app(config, ledger), pipe, concurrency)
            violations = await ledger.verify()
            per_commit = ledger.store.operations / max(1, ledger.store.batches)
        finally:
            await ledger.close()
        if violations:
            raise RuntimeError(f"ledger verify after the load: {violations}")
        if real["outcomes"].get("duplicate", 0) == 0 or real["outcomes"].get("applied", 0) == 0:
            raise RuntimeError(f"the mix did not apply and replay: {real['outcomes']}")
        sent = sum(real["statuses"].values())
        sidecar_rate = sent / real["seconds"]
        bare_rate = sum(bare["statuses"].values()) / bare["seconds"]
        at = f"{concurrency} client{'s' if concurrency > 1 else ''}"
        figures += [
            Figure(BENCH, f"signed events/s at {at}", sidecar_rate, "/s"),
            Figure(BENCH, f"bare aiohttp handler req/s at {at}", bare_rate, "/s"),
            Figure(BENCH, f"sidecar / bare at {at}", sidecar_rate / bare_rate, "x"),
            Figure(
                BENCH, f"event p99 latency at {at}", percentile(real["latencies"], 0.99) * 1e3, "ms"
            ),
            Figure(BENCH, f"events per commit at {at} (group commit)", per_commit, ""),
        ]
    return figures


def commit_ms(folder: Path, commits: int = 50) -> float:
    """One durable SQLite commit (WAL, synchronous=FULL, as the ledger does) on the disk
    of the temp dir: the floor of an event's latency, since each commit waits for fsync."""
    conn = sqlite3.connect(folder / "fsync.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (x INTEGER)")
        samples = []
        for i in range(commits):
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (?)", (i,))
            conn.execute("COMMIT")
            samples.append(time.perf_counter() - started)
    finally:
        conn.close()
    return median(samples) * 1e3


def run(quick: bool) -> list[Figure]:
    count = 400 if quick else 4000
    bodies = events(count, subscriptions=max(50, count // 4), replay_share=0.25)
    # spawn: a clean interpreter, not a fork of this one with its loop and threads.
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_client_process, args=(bodies, theirs), daemon=True)
    child.start()
    theirs.close()  # only the child holds that end now: if it dies, recv() ends in EOFError
    try:
        with tempfile.TemporaryDirectory(prefix="webhooks-bench-") as folder:
            figures = asyncio.run(_measure(ours, Path(folder), count))
            fsync = commit_ms(Path(folder))
    finally:
        with contextlib.suppress(OSError):  # a child that died has closed its end
            ours.send(None)
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    figures.insert(0, Figure(BENCH, "events per run (25% replays)", count, ""))
    figures.append(Figure(BENCH, "one fsync'd SQLite commit on this disk (context)", fsync, "ms"))
    return figures


if __name__ == "__main__":
    cli(run)
