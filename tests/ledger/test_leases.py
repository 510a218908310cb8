"""Holds of another process are taken back by its lease; its pid counts only on the same
kernel and in the same pid namespace (ledger/leases.py), on both stores."""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest

from ledger import Ledger, ManualClock
from ledger.clock import to_text
from ledger.leases import host_key

DEAD_PID = 4_194_999  # above Linux's largest pid_max: no process has it


async def _hand_hold_to(ledger: Ledger, clock: ManualClock, hostname: str) -> str:
    hold = await ledger.reserve("user:1", 100, "chat")
    until = to_text(clock.now() + timedelta(seconds=30))

    async def op(conn: object) -> None:
        await conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO instances (instance_id, kind, pid, hostname, started_at, lease_until)"
            " VALUES ('other', 'bot', ?, ?, ?, ?)",
            (DEAD_PID, hostname, to_text(clock.now()), until),
        )
        await conn.execute(  # type: ignore[attr-defined]
            "UPDATE holds SET instance_id = 'other' WHERE hold_id = ?", (hold.hold_id,)
        )

    await ledger.store.write(op)
    return hold.hold_id


@pytest.mark.parametrize("hostname", [socket.gethostname(), "elsewhere"])
async def test_a_dead_pid_of_another_namespace_or_host_waits_for_the_lease(
    ledger: Ledger, clock: ManualClock, hostname: str
) -> None:
    await _hand_hold_to(ledger, clock, hostname)

    assert (await ledger.sweep()).orphaned == 0  # its lease runs: never taken early
    clock.advance(seconds=31)
    assert (await ledger.sweep()).orphaned == 1  # lapsed: any instance takes it back
    assert (await ledger.balance("user:1")).tokens_held == 0
    assert await ledger.verify() == []


async def test_a_dead_pid_on_this_very_host_is_swept_at_once(
    ledger: Ledger, clock: ManualClock
) -> None:
    await _hand_hold_to(ledger, clock, host_key())

    assert (await ledger.sweep()).orphaned == 1
    assert await ledger.verify() == []
