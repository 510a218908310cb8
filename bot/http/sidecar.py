"""The HTTP sidecar: the payment providers' webhooks (bot/http/webhooks/), `/healthz`,
the agents' avatars (bot/http/avatars.py), also when it runs alone.

Every connection passes bot/http/guard.py's limits (header and body timeouts, a cap on
connections), so slow clients can't exhaust the process it shares with the bot."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

import bot
from bot.config import Config
from bot.core.telemetry import Telemetry
from bot.http.avatars import avatar_routes
from bot.http.guard import ConnectionGuard, GuardedSite, connection_limit, quiet_accept_errors
from bot.http.metrics import add_metrics
from bot.http.webhooks import lemonsqueezy
from bot.http.webhooks.lemonsqueezy import MAX_BODY, Notifier
from bot.runtime import StartupError, open_ledger
from ledger import Ledger

log = logging.getLogger(__name__)

Routes = Callable[[web.Application], None]
GUARD = web.AppKey("guard", ConnectionGuard)


def build_app(
    config: Config,
    ledger: Ledger,
    notifier: Notifier | None = None,
    routes: Routes | None = None,
    telemetry: Telemetry | None = None,
) -> web.Application:
    guard = ConnectionGuard(
        connection_limit(config.webhooks.max_connections), config.webhooks.body_timeout_seconds
    )
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard.middleware])
    app[GUARD] = guard

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
    app.router.add_routes(avatar_routes(config.data_path("avatars")))
    if config.metrics.enabled and config.metrics.port == 0:
        add_metrics(app, config, ledger, telemetry or _own_telemetry(ledger))
    if routes is not None:
        routes(app)
    return app


def _own_telemetry(ledger: Ledger) -> Telemetry:
    """The standalone sidecar's: it makes no paid calls, but it writes batches."""
    telemetry = Telemetry()
    ledger.store.on_batch = telemetry.write_batch
    return telemetry


async def _metrics_alone(config: Config, ledger: Ledger, telemetry: Telemetry) -> web.AppRunner:
    app = web.Application()
    add_metrics(app, config, ledger, telemetry)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = config.metrics.host, config.metrics.port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        raise StartupError(
            f"/metrics cannot listen on {host}:{port}: {error.strerror or error} "
            "(metrics.host / metrics.port)"
        ) from None
    return runner


async def start_sidecar(
    config: Config,
    ledger: Ledger,
    notifier: Notifier | None = None,
    routes: Routes | None = None,
    telemetry: Telemetry | None = None,
) -> web.AppRunner:
    telemetry = telemetry or _own_telemetry(ledger)
    app = build_app(config, ledger, notifier, routes, telemetry)
    if config.metrics.enabled and config.metrics.port != 0:
        metrics = await _metrics_alone(config, ledger, telemetry)

        async def stop_metrics(_app: web.Application) -> None:
            await metrics.cleanup()

        app.on_cleanup.append(stop_metrics)
    # aiohttp arms its keep-alive timer when a connection opens: a client that has not
    # sent a whole request head by then is closed. That is our header timeout. No
    # lingering: after a 408 or a 413 aiohttp would go on reading the unwanted body for
    # 10 s more, holding the slow client's connection; the guard reads every body it keeps.
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=config.webhooks.header_timeout_seconds,
        lingering_time=0,
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
