"""The single path of every paid AI call: reserve, call, settle.

1. Reserve the estimate (refused: InsufficientTokens, and the API is never called).
2. Call the API with no transaction open.
3. Success: commit the actual cost (the API's usage times the model's weight, or a flat
   price), together with whatever `store` writes, in one transaction. Failure, timeout or
   cancellation: release the hold and charge nothing.

Settling is shielded from cancellation: a member who gives up (or a shutdown) must not
leave a hold pending until the sweeper finds it.

A call that delivered part of its work before it failed or was cancelled (a streamed
answer cut off) is charged for that part: `salvage(error)` says what was delivered, the
charge is `cost` of it, committed once and recorded as partial; then the error goes on
(as `Salvaged`, or as the cancellation itself).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from bot.config import CostsSettings
from bot.core.telemetry import Telemetry
from bot.errors import AIUnusable
from ledger import BalanceAlert, Hold, InsufficientTokens, Ledger
from ledger.storage import Connection

log = logging.getLogger(__name__)

R = TypeVar("R")

# Waits before each new try of a release that failed: about 18 s in all, so a shutdown
# (drain) is never held longer; a hold still pending after them expires as usual.
RELEASE_RETRY_SECONDS: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0, 10.0)


@dataclass
class _Running:
    hold: Hold
    extended: datetime  # when its expiry was last pushed out (the ledger's clock)


# The hold of the metered call running in this task, for `Meter.keep_alive`.
_RUNNING: contextvars.ContextVar[_Running | None] = contextvars.ContextVar(
    "metered_call", default=None
)


@dataclass(frozen=True)
class Actor:
    """Who acts, and where: the account charged and the ids recorded with each entry."""

    account_id: str
    user_id: int
    guild_id: int | None
    can_manage: bool = False  # Manage Server in this guild (or the account's own user in a DM)
    roles: tuple[int, ...] = ()  # the member's roles in this guild, highest first
    channel_id: int | None = None  # where they act (a thread's parent channel)


@dataclass(frozen=True)
class Metered(Generic[R]):
    result: R
    charged: int
    available: int
    hold_id: str


class Salvaged(Exception, Generic[R]):
    """The call failed after delivering part of its work, and that part was charged."""

    def __init__(self, metered: Metered[R], cause: BaseException) -> None:
        super().__init__(f"partial result charged ({type(cause).__name__})")
        self.metered = metered
        self.cause = cause


class Meter:
    def __init__(self, ledger: Ledger, costs: CostsSettings) -> None:
        self.ledger = ledger
        self.costs = costs
        self._settling: set[asyncio.Future[Any]] = set()
        # Set by the limits service: refuses a paid call before anything is held (a
        # server's required role), and hears of each low-balance threshold crossed.
        self.gate: Callable[[Actor, str], Awaitable[None]] | None = None
        self.on_alert: Callable[[BalanceAlert], Awaitable[None]] | None = None
        self.telemetry: Telemetry | None = None  # set by Services: /metrics counts calls

    def _paid_line(
        self, actor: Actor, operation: str, model: str, charged: int, outcome: str, started: float
    ) -> None:
        """The one INFO line of a paid call: who, what, tokens, outcome, milliseconds."""
        seconds = time.monotonic() - started
        if self.telemetry is not None:
            kind = outcome.split(" ", 1)[0]
            self.telemetry.paid_call(operation, kind, None if kind == "refused" else seconds)
        log.info(
            "paid call: %s user %s %s %s: %d tokens, %s, %d ms",
            actor.account_id,
            actor.user_id,
            operation,
            model,
            charged,
            outcome,
            seconds * 1000,
        )

    def weighted(self, model: str, tokens: int) -> int:
        """The API's tokens times the model's weight, rounded up: never under-charge."""
        return math.ceil(tokens * self.costs.weight(model))

    async def run(
        self,
        actor: Actor,
        operation: str,
        estimate: int,
        model: str,
        call: Callable[[], Awaitable[R]],
        cost: Callable[[R], int],
        store: Callable[[Connection, R], Awaitable[None]] | None = None,
        salvage: Callable[[BaseException], R | None] | None = None,
        *,
        agent: str | None = None,
    ) -> Metered[R]:
        """Run one metered call. `cost(result)` is the final charge in tokens; `store`
        writes what the call produced inside the charge's transaction; `salvage(error)`
        is what a failed call delivered anyway (None: nothing, charge nothing)."""
        log.debug(
            "💰 Checking token balance for %s (%s, %d tokens)",
            actor.account_id,
            operation,
            estimate,
        )
        started = time.monotonic()
        if self.gate is not None:
            await self.gate(actor, operation)
        try:
            hold = await self._reserve(actor, operation, estimate, model, agent)
        except InsufficientTokens as refused:
            self._paid_line(
                actor, operation, model, 0, f"refused (has {refused.available})", started
            )
            raise
        log.debug(
            "%s has %d tokens available after holding %d",
            actor.account_id,
            hold.available_after,
            estimate,
        )
        running = _RUNNING.set(_Running(hold, self.ledger.clock.now()))
        try:
            log.debug("Calling %s for %s on %s", model, operation, actor.account_id)
            result = await call()
            charge = cost(result)
            if type(charge) is not int or charge < 0:  # never a refund, never a float
                log.error("%s on %s: %r is not a charge", operation, actor.account_id, charge)
                raise AIUnusable()
        except BaseException as error:
            reason = (
                "cancelled" if isinstance(error, asyncio.CancelledError) else type(error).__name__
            )
            partial = salvage(error) if salvage is not None else None
            if partial is not None:
                metered = await self._settle(
                    self._commit_partial(actor, operation, hold, partial, cost, store, reason)
                )
                charged = metered.charged if metered is not None else 0
                self._paid_line(actor, operation, model, charged, f"partial ({reason})", started)
                if metered is not None and not isinstance(error, asyncio.CancelledError):
                    raise Salvaged(metered, error) from error
                raise
            log.debug(
                "❌ %s failed on %s (%s); nothing charged", operation, actor.account_id, reason
            )
            await self._settle(self._release(hold, reason))
            self._paid_line(actor, operation, model, 0, f"failed ({reason})", started)
            raise
        finally:
            _RUNNING.reset(running)
        log.debug("💸 Deducting %d tokens from %s...", charge, actor.account_id)

        async def commit(conn: Connection):
            if store is not None:
                await store(conn, result)
            return await self.ledger.commit_in(conn, hold, charge)

        try:
            resolution = await self._settle(self.ledger.store.write(commit))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Storing what the call produced failed: the member gets nothing, so pays nothing.
            log.exception("storing the result of %s failed; releasing the hold", operation)
            await self._settle(self._release(hold, "storing the result failed"))
            raise
        log.debug(
            "✅ Tokens deducted from %s. Remaining: %d", actor.account_id, resolution.available
        )
        self._paid_line(actor, operation, model, resolution.charged, "ok", started)
        self._raise_alerts(resolution.alerts)
        return Metered(result, resolution.charged, resolution.available, hold.hold_id)

    async def _commit_partial(
        self,
        actor: Actor,
        operation: str,
        hold: Hold,
        partial: R,
        cost: Callable[[R], int],
        store: Callable[[Connection, R], Awaitable[None]] | None,
        reason: str,
    ) -> Metered[R] | None:
        charge = cost(partial)
        log.debug(
            "✂️ %s on %s broke off (%s); charging the %d tokens delivered",
            operation,
            actor.account_id,
            reason,
            charge,
        )

        async def commit(conn: Connection):
            if store is not None:
                await store(conn, partial)
            return await self.ledger.commit_in(conn, hold, charge, f"partial: {reason}")

        try:
            resolution = await self.ledger.store.write(commit)
        except Exception:
            log.exception("storing the partial result of %s failed; releasing the hold", operation)
            await self._release(hold, "storing the partial result failed")
            return None
        self._raise_alerts(resolution.alerts)
        return Metered(partial, resolution.charged, resolution.available, hold.hold_id)

    async def keep_alive(self) -> None:
        """Called by a long call each time it makes progress (an upload's embedding
        batches): its hold's expiry moves a time to live on, at most every quarter of one,
        so a call that keeps advancing never outlives its hold. A call that stalls does,
        and is still charged if it finishes (Ledger._charge_late)."""
        running = _RUNNING.get()
        if running is None:
            return
        now = self.ledger.clock.now()
        if now - running.extended < self.ledger.hold_ttl / 4:
            return
        running.extended = now
        await self.ledger.extend(running.hold)

    async def _reserve(
        self, actor: Actor, operation: str, amount: int, model: str, agent: str | None
    ) -> Hold:
        task = asyncio.ensure_future(
            self.ledger.reserve(
                actor.account_id,
                amount,
                operation,
                actor.user_id,
                actor.guild_id,
                model,
                roles=actor.roles,
                agent=agent,
            )
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The reserve may still land after we were cancelled: release it when it does.
            task.add_done_callback(self._release_late)
            raise
        except InsufficientTokens as error:
            log.debug(
                "❌ Insufficient tokens on %s for %s: needs %d, has %d",
                actor.account_id,
                operation,
                error.needed,
                error.available,
            )
            self.refused(actor.account_id)
            raise

    def refused(self, account_id: str) -> None:
        """The pool could not pay for a call: the 0% alert may be due (in the background)."""
        self._keep(asyncio.ensure_future(self._note_refusal(account_id)))

    async def _note_refusal(self, account_id: str) -> None:
        if self.on_alert is not None:
            self._raise_alerts(await self.ledger.note_refusal(account_id))

    def _raise_alerts(self, alerts: tuple[BalanceAlert, ...]) -> None:
        """Deliver the most severe of the thresholds one charge crossed (in the background:
        the member's answer does not wait for the managers' alert)."""
        if alerts and self.on_alert is not None:
            self._keep(asyncio.ensure_future(self._deliver(alerts[-1])))

    async def _deliver(self, alert: BalanceAlert) -> None:
        assert self.on_alert is not None
        try:
            await self.on_alert(alert)
        except Exception:  # an alert that cannot be delivered must not break a command
            log.exception("could not deliver the low-balance alert of %s", alert.account_id)

    def _release_late(self, task: asyncio.Future[Hold]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        self._keep(asyncio.ensure_future(self._release(task.result(), "cancelled")))

    async def _release(self, hold: Hold, reason: str) -> None:
        """Free `hold`. A release that fails (the database briefly unusable: a full file
        table under attack, a lock held past every retry) is tried again in the
        background instead of leaving its tokens held until the hold expires, and its
        error never replaces the one the member is told about."""
        try:
            await self.ledger.release(hold, reason)
        except Exception as error:
            log.warning(
                "releasing hold %s of %s failed (%s); retrying in the background",
                hold.hold_id,
                hold.account_id,
                error,
            )
            self._keep(asyncio.ensure_future(self._release_again(hold, reason)))

    async def _release_again(self, hold: Hold, reason: str) -> None:
        error: Exception | None = None
        for wait in RELEASE_RETRY_SECONDS:
            await asyncio.sleep(wait)
            try:
                await self.ledger.release(hold, reason)
            except Exception as failed:
                error = failed
                continue
            log.info("released hold %s of %s on a retry", hold.hold_id, hold.account_id)
            return
        log.error(
            "could not release hold %s of %s (%s): its tokens stay held until the sweeper"
            " expires it (limits.hold_ttl_seconds)",
            hold.hold_id,
            hold.account_id,
            error,
        )

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle(self, work: Awaitable[R]) -> R:
        """Finish `work` even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(work)
        self._keep(task)
        return await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for settlements still running (at shutdown, before closing the ledger)."""
        while self._settling:
            await asyncio.gather(*list(self._settling), return_exceptions=True)
