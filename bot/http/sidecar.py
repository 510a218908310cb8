"""The HTTP sidecar: the payment providers' webhooks (bot/http/webhooks/), `/healthz`,
and (from the bot) avatars."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

import bot
from bot.config import Config
from bot.http.webhooks import lemonsqueezy
from bot.http.webhooks.lemonsqueezy import MAX_BODY, Notifier
from bot.runtime import open_ledger
from ledger import Ledger

log = logging.getLogger(__name__)

Routes = Callable[[web.Application], None]


def build_app(
    config: Config,
    ledger: Ledger,
    notifier: Notifier | None = None,
    routes: Routes | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)

    async def healthz(request: web.Request) -> web.Response:
        try:
            await ledger.store.reader.execute_fetchall("SELECT 1")
        except Exception:  # any failure means the database is unreachable
            return web.json_response(
                {"ok": False, "database": False, "version": bot.__version__}, status=503
            )
        return web.json_response({"ok": True, "database": True, "version": bot.__version__})

    app.router.add_post(lemonsqueezy.PATH, lemonsqueezy.route(config, ledger, notifier))
    app.router.add_get("/healthz", healthz)
    if routes is not None:
        routes(app)
    return app


async def start_sidecar(
    config: Config, ledger: Ledger, notifier: Notifier | None = None, routes: Routes | None = None
) -> web.AppRunner:
    runner = web.AppRunner(build_app(config, ledger, notifier, routes), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.webhooks.host, config.webhooks.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    log.info("webhook sidecar listening on http://%s:%s", host, port)
    return runner


async def serve_alone(config: Config) -> int:
    """`python -m bot webhooks`: the sidecar in its own process, on the same database."""
    ledger = await open_ledger(config, "webhooks")
    try:
        ledger.start_maintenance()
        runner = await start_sidecar(config, ledger)
        host, port = runner.addresses[0][:2]
        print(f"listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()
    finally:
        await ledger.close()
    return 0
