"""`GET /metrics`: Prometheus's text format, through prometheus-client.

- From the database at each scrape, so every process reports the same and the figures
  equal the ledger's: `bot_tokens_charged_this_period{operation, plan}` (a gauge: the
  tokens charged in each account's current period, summed; plan is the account's plan
  now), `bot_holds_pending` and `bot_tokens_held` (holds not yet settled),
  `bot_webhook_events_total{outcome}`.

  The charged tokens come from the per-period counters (ledger/totals.py), one row per
  account and operation, never from the audit log: a scrape's cost follows the number
  of accounts, not the ledger's age (issue 17). It is a gauge, not a counter, because
  it drops when an account's period moves on; a counter would make rate() read that
  drop as a reset.
- From this process (bot/core/telemetry.py): paid calls by outcome, AI latency by
  operation, ledger write batch sizes. In `run` that is the bot's work; the standalone
  sidecar counts only its own batches.

Served on the sidecar's listener, or on `metrics.host:metrics.port` alone when a port is
set (keep it off the public address); with `METRICS_TOKEN` set, only to
`Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bot.config import Config
from bot.core.telemetry import Telemetry
from ledger import Ledger

PATH = "/metrics"

# One primary-key range of usage_totals per account (its current period's operations).
CHARGED_SQL = (
    "SELECT t.subject, u.plan_type, SUM(t.tokens) FROM usage_limits u"
    " JOIN usage_totals t ON t.account_id = u.account_id AND t.period_seq = u.period_seq"
    " AND t.kind = 'operation' GROUP BY 1, 2 ORDER BY 1, 2"
)


class _Figures(Collector):
    """The ledger's figures as read for one scrape."""

    def __init__(
        self,
        charged: list[tuple[str, str, int]],
        pending: tuple[int, int],
        webhooks: list[tuple[str, int]],
    ) -> None:
        self.charged, self.pending, self.webhooks = charged, pending, webhooks

    def collect(self) -> Iterator[Metric]:
        tokens = GaugeMetricFamily(
            "bot_tokens_charged_this_period",
            "Tokens charged in each account's current period, by operation and plan",
            labels=["operation", "plan"],
        )
        for operation, plan, total in self.charged:
            tokens.add_metric([operation, plan], total)
        yield tokens
        yield GaugeMetricFamily("bot_holds_pending", "Holds not yet settled", self.pending[0])
        yield GaugeMetricFamily(
            "bot_tokens_held", "Tokens set aside by pending holds", self.pending[1]
        )
        events = CounterMetricFamily(
            "bot_webhook_events", "Signed webhook events received, by outcome", labels=["outcome"]
        )
        for outcome, count in self.webhooks:
            events.add_metric([outcome], count)
        yield events


async def _figures(ledger: Ledger) -> _Figures:
    read = ledger.store.reader.execute_fetchall
    charged = await read(CHARGED_SQL)
    pending = await read(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM holds WHERE status = 'pending'"
    )
    webhooks = await read("SELECT outcome, COUNT(*) FROM webhook_events GROUP BY 1 ORDER BY 1")
    return _Figures(
        [(str(o), str(p), int(n)) for o, p, n in charged],
        (int(pending[0][0]), int(pending[0][1])),
        [(str(o), int(n)) for o, n in webhooks],
    )


def metrics_handler(config: Config, ledger: Ledger, telemetry: Telemetry) -> Handler:
    token = config.secrets.metrics_token

    async def metrics(request: web.Request) -> web.Response:
        if token is not None:
            given = request.headers.get("Authorization", "").encode()
            expected = f"Bearer {token.get_secret_value()}".encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(status=401, text="a bearer token is required\n")
        scrape = CollectorRegistry()
        scrape.register(await _figures(ledger))
        body = generate_latest(scrape) + generate_latest(telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics


def add_metrics(app: web.Application, config: Config, ledger: Ledger, telemetry: Telemetry) -> None:
    app.router.add_get(PATH, metrics_handler(config, ledger, telemetry))
