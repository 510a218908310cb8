"""Low-balance alerts: raised once per threshold per period, recorded in the ledger.

A threshold is crossed when what is left of the account's pool (allowance minus this
period's charges, plus bonus tokens; holds in progress do not count) falls to that share
of the monthly allowance: 20%, then 0%. A reserve refused for lack of tokens while under
20% also counts as 0%: the pool can no longer pay for what members ask of it.

The alert row is written by the transaction that crossed the threshold, keyed by account,
period and threshold, so however many processes charge at once exactly one of them raises
it; that process delivers it (its instance id is on the row).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.clock import from_text, to_text
from ledger.records import BalanceAlert
from ledger.storage import Connection

THRESHOLDS = (20, 0)  # percent of the monthly allowance left


def pool_left(row: dict[str, Any]) -> int:
    return max(0, row["tokens_limit"] - row["tokens_used"] + row["bonus_tokens"])


async def alerts_in(
    conn: Connection,
    row: dict[str, Any],
    instance_id: str,
    now: datetime,
    *,
    refused: bool = False,
) -> tuple[BalanceAlert, ...]:
    """Record the thresholds `row` (an account after a charge) has crossed for the first
    time this period, and return them, most severe last."""
    limit = row["tokens_limit"]
    left = pool_left(row)
    if limit <= 0 or left * 100 > THRESHOLDS[0] * limit:
        return ()
    raised: list[BalanceAlert] = []
    for threshold in THRESHOLDS:
        if left * 100 > threshold * limit and not (refused and threshold == 0):
            continue
        new = await conn.execute_fetchall(
            "INSERT INTO balance_alerts (account_id, period_seq, threshold, remaining,"
            " instance_id, created_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account_id, period_seq, threshold) DO NOTHING RETURNING threshold",
            (row["account_id"], row["period_seq"], threshold, left, instance_id, to_text(now)),
        )
        if new:
            raised.append(
                BalanceAlert(
                    row["account_id"], threshold, left, limit, from_text(row["period_end"])
                )
            )
    return tuple(raised)
