"""`POST /webhooks/lemonsqueezy`, in this order: a body over 1 MB is 413; no signing
secret configured refuses everything (503: we cannot tell a real event from a forgery);
a missing or wrong `X-Signature` is 401; a body that is not a JSON event is 400; then
the event is applied and recorded, raw body included, in one transaction.

An event that cannot be applied (a field missing) is answered 200 and kept as `invalid`
with its reason, for `python -m bot billing replay`: LemonSqueezy resending the same
bytes would not fix it. Only our own transient failure (the database busy past its
timeout) answers 500, so that LemonSqueezy retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.billing.apply import Outcome, apply_event, keep_invalid
from bot.billing.lemonsqueezy.webhook import parse_event, verify
from bot.billing.provider import InvalidEvent
from bot.billing.service import rules_of
from bot.config import Config
from ledger import Ledger
from ledger.errors import StoreBusy

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
PATH = "/webhooks/lemonsqueezy"
Notifier = Callable[[str, str | None, str, str], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.Response]]


def route(config: Config, ledger: Ledger, notifier: Notifier | None) -> Handler:
    secret = config.secrets.lemonsqueezy_webhook_secret
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
        if not verify(secret.get_secret_value(), body, request.headers.get("X-Signature", "")):
            log.warning("webhook with a missing or wrong signature refused")
            return web.json_response({"error": "bad signature"}, status=401)
        try:
            event = parse_event(body)
        except InvalidEvent as error:
            return web.json_response({"error": str(error)}, status=400)
        try:
            outcome = await apply_event(ledger, event, rules_of(config), body)
        except StoreBusy:
            log.warning("database busy while applying %s; LemonSqueezy will retry", event.name)
            return web.json_response({"error": "busy, retry"}, status=500)
        except UnicodeEncodeError:  # a lone surrogate in a text field: SQLite cannot store it
            log.warning("webhook %s has text that cannot be stored", event.name)
            return web.json_response({"error": "unreadable event"}, status=400)
        except Exception as error:  # a bug of ours: keep the body for a replay once fixed
            log.exception("webhook %s %s could not be applied", event.name, event.object_id)
            outcome = await keep_invalid(ledger, event, body, type(error).__name__)
        if outcome.outcome == "invalid":
            log.warning(
                "webhook %s %s kept as invalid (%s): replay it once fixed",
                event.name,
                event.object_id,
                outcome.detail,
            )
        log.info(
            "webhook %s %s: %s %s",
            event.name,
            event.object_id,
            outcome.outcome,
            outcome.account_id or "",
        )
        if notifier is not None and outcome.plan_changed and outcome.account_id:
            task = asyncio.ensure_future(notify(notifier, outcome, config))
            notifying.add(task)  # keep a reference until it is done
            task.add_done_callback(notifying.discard)
        return web.json_response({"ok": True, "outcome": outcome.outcome})

    return lemonsqueezy


async def notify(notifier: Notifier, outcome: Outcome, config: Config) -> None:
    assert outcome.account_id is not None and outcome.plan_after is not None
    if outcome.plan_after == "pro":
        message = f"🎉 Pro is active: {config.plans.pro.summary}. Thank you!"
    else:
        message = "Your Pro subscription has ended; this account is back on the free plan."
    try:
        await notifier(outcome.account_id, outcome.user_id, outcome.plan_after, message)
    except Exception:  # a failed notification never fails the webhook
        log.warning("could not notify %s of its plan change", outcome.account_id, exc_info=True)
