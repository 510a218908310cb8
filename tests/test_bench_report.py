"""The bench table shows each aim exactly as it was checked (issue 16, point 10)."""

from __future__ import annotations

import pytest

from bench.report import Figure, meets, table


def test_the_aim_shown_is_the_aim_checked() -> None:
    # 1.23 requests per 100 chunks under "<= 1" was printed "ok": never again.
    figure = Figure("documents", "embedding requests per 100 chunks", 1.23, "", "<= 1", True)
    assert figure.met is False
    assert table([figure]).splitlines()[-1].endswith("<= 1  MISSED")
    assert Figure("d", "x", 2.0, "", "<= 2.00 (ceil(chunks / 100) requests)").met is True
    assert Figure("l", "ratio", 0.7, "x", ">= 0.5 (aim 1.0)").met is True
    assert Figure("m", "p99", 2.5, "ms", "< 2 ms").met is False


def test_a_quick_run_says_n_a_with_its_reason_and_a_full_run_says_missed() -> None:
    slow = Figure("m", "p99", 2.5, "ms", "< 2 ms", quick_reason="one stall of a shared runner")
    assert "MISSED" in table([slow])
    quick = Figure(**{**slow.__dict__, "quick": True})
    line = table([quick]).splitlines()[-1]
    assert line.endswith("n/a on this machine (one stall of a shared runner)")
    assert "MISSED" not in line
    met = Figure("m", "p99", 1.5, "ms", "< 2 ms", quick=True)
    assert table([met]).splitlines()[-1].endswith("ok")


def test_an_aim_must_be_a_comparison() -> None:
    with pytest.raises(ValueError):
        meets(1.0, "about 1")
