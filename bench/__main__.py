"""`python -m bench [--quick]`: every benchmark, each in its own process, then one table."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from bench.report import Figure, table

# In the order the table shows them; each module has a `run(quick)` and a `cli`.
MODULES = [
    "bench.ledger_bench",
    "bench.postgres_bench",
    "bench.caps_bench",
    "bench.metering_bench",
    "bench.documents_bench",
    "bench.webhooks_bench",
    "bench.startup_bench",
    "bench.memory_bench",
    "bench.cost_bench",
    "bench.retrieval_bench",
    "bench.chat_bench",
    "bench.chat_load_bench",
]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="short mode (CI)")
    parser.add_argument("--only", action="append", help="run only modules containing this")
    args = parser.parse_args()
    figures: list[Figure] = []
    failed: list[str] = []
    for module in MODULES:
        if args.only and not any(part in module for part in args.only):
            continue
        started = time.perf_counter()
        command = [sys.executable, "-m", module, "--json"] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True)
        took = time.perf_counter() - started
        if done.returncode != 0:
            failed.append(module)
            print(f"{module} failed (exit {done.returncode}):\n{done.stderr}", file=sys.stderr)
            continue
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                figures.append(Figure(**json.loads(line)))
        print(f"{module}: {took:.1f} s", file=sys.stderr, flush=True)
    print(table(figures))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
