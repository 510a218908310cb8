"""The HTTP sidecar: LemonSqueezy webhooks, `/healthz`, the agents' avatars, `/metrics`.

Every connection passes bot/http/guard.py's limits (header and body timeouts, a cap on
connections), so slow clients can't exhaust the process it shares with the bot.

`POST /webhooks/lemonsqueezy`, in this order: a body over 1 MB is 413; no signing
secret configured refuses everything (503: we cannot tell a real event from a forgery);
a missing or wrong `X-Signature` (HMAC-SHA256 of the raw bytes, hex, compared in
constant time) is 401; a body that is not a JSON event is 400; then the event is applied
and recorded in one transaction. Only our own transient failure (the database busy past
its timeout) answers 500, so that LemonSqueezy retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import signal
import sqlite3
from collections.abc import Awaitable, Callable

from aiohttp import web

import bot
from bot.config import Config
from bot.http.avatars import avatar_routes
from bot.http.guard import ConnectionGuard, GuardedSite, connection_limit, quiet_accept_errors
from bot.runtime import StartupError, open_ledger
from ledger import Ledger
from ledger.store import is_busy
from ledger.subscriptions import BillingEvent, EventOutcome, apply_event

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
Notifier = Callable[[str, str | None, str, str], Awaitable[None]]
Routes = Callable[[web.Application], None]
GUARD = web.AppKey("guard", ConnectionGuard)


class InvalidEvent(ValueError):
    """A signed body that is not a LemonSqueezy event we can read."""


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def parse_event(body: bytes) -> BillingEvent:
    try:
        payload = json.loads(body)
    # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer over Python's
    # digit limit; RecursionError is nesting deeper than the interpreter's stack.
    except (ValueError, RecursionError):
        raise InvalidEvent("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidEvent("the body is not a JSON object")
    meta, data = payload.get("meta"), payload.get("data")
    if not isinstance(meta, dict) or not isinstance(data, dict):
        raise InvalidEvent("meta and data must be objects")
    name = meta.get("event_name")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("meta.event_name is missing")
    attributes = data.get("attributes", {})
    custom = meta.get("custom_data") or {}
    if not isinstance(attributes, dict) or not isinstance(custom, dict):
        raise InvalidEvent("data.attributes and meta.custom_data must be objects")
    object_id = data.get("id")
    if not isinstance(object_id, str | int) or isinstance(object_id, bool):
        raise InvalidEvent("data.id is missing")
    return BillingEvent(
        name=name,
        body_sha256=hashlib.sha256(body).hexdigest(),
        test_mode=meta.get("test_mode") is True,
        object_type=str(data.get("type", "")),
        object_id=str(object_id),
        attributes=attributes,
        custom=custom,
    )


def build_app(
    config: Config,
    ledger: Ledger,
    notifier: Notifier | None = None,
    routes: Routes | None = None,
) -> web.Application:
    secret = config.secrets.lemonsqueezy_webhook_secret
    guard = ConnectionGuard(
        connection_limit(config.webhooks.max_connections), config.webhooks.body_timeout_seconds
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard.middleware])
    app[GUARD] = guard
    notifying: set[asyncio.Future[None]] = set()

    async def lemonsqueezy(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return web.json_response({"error": "body too large"}, status=413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return web.json_response({"error": "body too large"}, status=413)
        if secret is None:
            log.error("a webhook arrived but LEMONSQUEEZY_WEBHOOK_SECRET is not set; refused")
            return web.json_response({"error": "webhooks are not configured"}, status=503)
        given = request.headers.get("X-Signature", "")
        expected = signature(secret.get_secret_value(), body)
        if not hmac.compare_digest(given.strip().lower().encode(), expected.encode()):
            log.warning("webhook with a missing or wrong signature refused")
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            event = parse_event(body)
        except InvalidEvent as error:
            return web.json_response({"error": str(error)}, status=400)
        try:
            outcome = await apply_event(
                ledger, event, accept_test_mode=config.lemonsqueezy.test_mode
            )
        except sqlite3.OperationalError as error:
            if is_busy(error):
                log.warning("database busy while applying %s; LemonSqueezy will retry", event.name)
                return web.json_response({"error": "busy, retry"}, status=500)
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            log.warning(
                "webhook %s has fields of the wrong shape: %s", event.name, type(error).__name__
            )
            return web.json_response({"error": "unreadable event"}, status=400)
        log.info(
            "webhook %s %s: %s %s",
            event.name,
            event.object_id,
            outcome.outcome,
            outcome.account_id or "",
        )
        if notifier is not None and outcome.plan_changed and outcome.account_id:
            task = asyncio.ensure_future(_notify(notifier, outcome, config))
            notifying.add(task)  # keep a reference until it is done
            task.add_done_callback(notifying.discard)
        return web.json_response({"ok": True, "outcome": outcome.outcome})

    async def healthz(request: web.Request) -> web.Response:
        try:
            await ledger.store.reader.execute_fetchall("SELECT 1")
        except Exception:  # any failure means the database is unreachable
            return web.json_response(
                {"ok": False, "database": False, "version": bot.__version__}, status=503
            )
        return web.json_response({"ok": True, "database": True, "version": bot.__version__})

    app.router.add_post("/webhooks/lemonsqueezy", lemonsqueezy)
    app.router.add_get("/healthz", healthz)
    app.router.add_routes(avatar_routes(config.data_path("avatars")))
    if routes is not None:
        routes(app)
    return app


def pro_active_message(config: Config) -> str:
    pro = config.plans.pro
    agents = "unlimited agents" if pro.max_agents == 0 else f"up to {pro.max_agents:,} agents"
    return f"🎉 Pro is active: {pro.monthly_tokens:,} tokens a month and {agents}. Thank you!"


async def _notify(notifier: Notifier, outcome: EventOutcome, config: Config) -> None:
    assert outcome.account_id is not None and outcome.plan_after is not None
    if outcome.plan_after == "pro":
        message = pro_active_message(config)
    else:
        message = "Your Pro subscription has ended; this account is back on the free plan."
    try:
        await notifier(outcome.account_id, outcome.user_id, outcome.plan_after, message)
    except Exception:  # a failed notification never fails the webhook
        log.warning("could not notify %s of its plan change", outcome.account_id, exc_info=True)


async def start_sidecar(
    config: Config, ledger: Ledger, notifier: Notifier | None = None, routes: Routes | None = None
) -> web.AppRunner:
    app = build_app(config, ledger, notifier, routes)
    # aiohttp arms its keep-alive timer when a connection opens: a client that has not
    # sent a whole request head by then is closed. That is our header timeout.
    runner = web.AppRunner(
        app, access_log=None, keepalive_timeout=config.webhooks.header_timeout_seconds
    )
    await runner.setup()
    quiet_accept_errors(asyncio.get_running_loop())
    host, port = config.webhooks.host, config.webhooks.port
    site = GuardedSite(runner, host, port, app[GUARD])
    try:
        await site.start()
    except OSError as error:
        await runner.cleanup()
        raise StartupError(
            f"the sidecar cannot listen on {host}:{port}: {error.strerror or error} "
            "(webhooks.host / webhooks.port, or BOT_WEBHOOKS__PORT)"
        ) from None
    if config.secrets.lemonsqueezy_webhook_secret is None:
        log.warning(
            "LEMONSQUEEZY_WEBHOOK_SECRET is not set: every webhook will be refused (503) "
            "until it is; avatars and /healthz are served"
        )
    return runner


def listening_on(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def serve_alone(config: Config) -> int:
    """`python -m bot webhooks`: the sidecar in its own process, on the same database."""
    ledger = await open_ledger(config, "webhooks", check_pages=True)
    try:
        ledger.start_maintenance()
        runner = await start_sidecar(config, ledger)
        # The one line that says it listens (stdout: scripts and tests wait for it).
        print(f"listening on {listening_on(runner)}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
    finally:
        await ledger.close()
    return 0
