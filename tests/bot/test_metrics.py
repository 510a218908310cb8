"""`GET /metrics` (issue 16, point 6): it parses with prometheus-client's own parser, and
after a scripted session its counters equal the ledger's figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bot.config import Config
from bot.front.standin import CommandRunner
from bot.http.sidecar import build_app
from bot.services import Services
from tests.billing import payloads

ACCOUNT = "guild:1000"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def app_config(app_config: Config, database: str) -> Config:
    """On each store in turn (the `database` fixture of tests/conftest.py)."""
    storage = app_config.storage.model_copy(update={"database": database})
    return app_config.model_copy(update={"storage": storage})


async def test_metrics_equal_the_ledger_after_a_session(
    owner: CommandRunner, services: Services, app_config: Config, tmp_path: Path, fake_openai: Any
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("Saturn has rings of ice. " * 40)
    await owner.run('/agent create name:Nova prompt:"An astronomer"')
    await owner.run("/avatar generate agent:Nova")
    await owner.run("/avatar generate agent:Nova")
    await owner.run(f"/docs upload agent:Nova file:{notes}")
    await owner.run("/chat agent:Nova message:hello")
    fake_openai.fail_next("images", "500")
    await owner.run("/avatar generate agent:Nova")  # failed: nothing charged
    app_config.secrets.lemonsqueezy_webhook_secret = SecretStr(payloads.SECRET)
    app = build_app(app_config, services.ledger, telemetry=services.telemetry)
    async with TestClient(TestServer(app)) as client:
        for body in (
            payloads.encode(payloads.subscription("subscription_created")),
            payloads.encode(payloads.subscription("subscription_updated", variant_id="77")),
        ):
            signature = {"X-Signature": payloads.sign(body), "Content-Type": "application/json"}
            posted = await client.post("/webhooks/lemonsqueezy", data=body, headers=signature)
            assert posted.status == 200
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        found = samples(await response.text())
    usage = await services.ledger.usage_by_operation(ACCOUNT)
    assert set(usage) >= {"avatar_generation", "document_upload", "chat"}
    for operation, tokens in usage.items():
        key = ("bot_tokens_charged_total", (("operation", operation), ("plan", "free")))
        assert found[key] == tokens, operation
    rows = await services.ledger.store.reader.execute_fetchall(
        "SELECT operation_type, COUNT(*) FROM holds WHERE status = 'committed' GROUP BY 1"
    )
    committed = {r[0]: r[1] for r in rows}
    events = await services.ledger.store.reader.execute_fetchall(
        "SELECT outcome, COUNT(*) FROM webhook_events GROUP BY 1"
    )
    assert sum(n for _, n in events) == 2
    for outcome, count in events:
        assert found[("bot_webhook_events_total", (("outcome", outcome),))] == count, outcome
    for operation, count in committed.items():
        key = ("bot_paid_calls_total", (("operation", operation), ("outcome", "ok")))
        assert found[key] == count, operation
    failed = ("bot_paid_calls_total", (("operation", "avatar_generation"), ("outcome", "failed")))
    assert found[failed] == 1
    assert found[("bot_holds_pending", ())] == 0
    latency = ("bot_ai_call_seconds_count", (("operation", "avatar_generation"),))
    assert found[latency] == 3
    assert found[("bot_ledger_write_batch_size_count", ())] >= sum(committed.values())


async def test_metrics_want_the_bearer_token_when_one_is_set(
    services: Services, app_config: Config
) -> None:
    app_config.secrets.metrics_token = SecretStr("s3cret")
    app = build_app(app_config, services.ledger, telemetry=services.telemetry)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/metrics")).status == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.get("/metrics", headers=wrong)).status == 401
        right = {"Authorization": "Bearer s3cret"}
        assert (await client.get("/metrics", headers=right)).status == 200


async def test_metrics_can_be_kept_off_the_sidecar(services: Services, app_config: Config) -> None:
    app_config.metrics.port = 1  # a listener of its own: not on the public sidecar
    app = build_app(app_config, services.ledger, telemetry=services.telemetry)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/metrics")).status == 404
