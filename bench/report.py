"""What a benchmark reports, and the one table that `python -m bench` prints.

An aim is a comparison written once ("<= 1.3", ">= 0.5 (aim 1.0)", "< 2 ms") and the
table checks it against the figure's own value, so what it shows is what was checked.
A quick run (CI, a shared machine, small inputs) marks an aim it did not meet as "n/a on
this machine" with the figure's reason; the full run says MISSED."""

from __future__ import annotations

import argparse
import json
import operator
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class Figure:
    bench: str  # which benchmark, e.g. "ledger"
    name: str  # what was measured, e.g. "pairs/s at 100 tasks"
    value: float
    unit: str  # "/s", "ms", "MiB", "x" (a ratio), "" (a count)
    aim: str = ""  # the target from the issue, e.g. ">= 0.5"; checked by `meets`
    met: bool | None = None  # None when there is no aim
    quick: bool = False  # measured by a quick run
    # Why a quick run on a shared CI machine may not meet the aim (shown as "n/a").
    quick_reason: str = ""

    def __post_init__(self) -> None:
        if self.aim:  # the aim shown decides, never a separate flag
            object.__setattr__(self, "met", meets(self.value, self.aim))


_AIM = re.compile(r"^\s*(<=|>=|<|>|==)\s*(-?[0-9][0-9_,.]*)")
_COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def meets(value: float, aim: str) -> bool:
    """`value` against an aim's leading comparison ("<= 1.3", ">= 0.5 (aim 1.0)")."""
    found = _AIM.match(aim)
    if found is None:
        raise ValueError(f"an aim must start with a comparison: {aim!r}")
    bound = float(found.group(2).replace(",", "").replace("_", ""))
    if found.group(1) == "==":
        return value == bound
    return bool(_COMPARE[found.group(1)](value, bound))


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def _value(figure: Figure) -> str:
    if figure.unit == "x":
        return f"{figure.value:.2f}x"
    if figure.unit in {"ms", "µs"}:
        return f"{figure.value:,.3f} {figure.unit}"
    if figure.value >= 100 or figure.value == int(figure.value):
        return f"{figure.value:,.0f} {figure.unit}".rstrip()
    return f"{figure.value:,.2f} {figure.unit}".rstrip()


def table(figures: Sequence[Figure]) -> str:
    rows = [("bench", "figure", "value", "aim", "")]
    for f in figures:
        mark = "" if f.met is None else ("ok" if f.met else "MISSED")
        if f.met is False and f.quick:
            mark = f"n/a on this machine ({f.quick_reason or 'a quick run is too small'})"
        rows.append((f.bench, f.name, _value(f), f.aim, mark))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        cells[2] = row[2].rjust(widths[2])
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cli(run: Callable[[bool], list[Figure]], argv: Sequence[str] | None = None) -> None:
    """The command line every benchmark module shares: `--quick` for CI's short mode,
    `--json` for `python -m bench`, which runs each module in its own process so that one
    benchmark's memory and threads cannot colour another's figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="short mode (CI)")
    parser.add_argument("--json", action="store_true", help="print figures as JSON lines")
    args = parser.parse_args(argv)
    figures = run(args.quick)
    if args.quick:
        figures = [replace(f, quick=True) for f in figures]
    if args.json:
        for figure in figures:
            print(json.dumps(asdict(figure)), flush=True)
    else:
        print(table(figures))
