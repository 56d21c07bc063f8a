"""HTTP benchmark: our check, track and batch track next to the hand-written floor views.

One gunicorn (gthread workers) serves both the real endpoints and bench/floor.py's
floor views against a dedicated PostgreSQL database on 127.0.0.1; client processes
with keep-alive connections call each endpoint at each concurrency for a fixed
time, in one run, so the ratios are comparable. A figure, not a test::

    .venv/bin/python bench/bench_http.py                  # concurrency 1 8 64, 6 s each
    .venv/bin/python bench/bench_http.py --seconds 8 --concurrency 8 64 --batch-size 1000

Each client thread bills its own customer (64 customers), as many users would; the
"hot" cells send every client's calls to one customer (one entitlement row), and
compare with the spread cell ("vs floor" is then vs spread customers). Batch track is
reported as exact deductions per second (events newly accepted/s; each key is new).
``--database`` names the throwaway database (on a shared server: a name of your own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import http_harness as harness

PG_URL_BASE = os.environ.get("PG_URL_BASE", harness.DEFAULT_PG)
CUSTOMERS = 64
ENDPOINTS = {
    "floor check": "/floor/check",
    "check": "/api/auth/billing/check",
    "floor track": "/floor/track",
    "track": "/api/auth/billing/track",
    "floor batch track": "/floor/track/batch",
    "batch track": "/api/auth/billing/track/batch",
    # Every client bills the same customer (one entitlement row), against the spread cells.
    "hot track": "/api/auth/billing/track",
    "hot batch track": "/api/auth/billing/track/batch",
}
#: The cell each one is compared with ("vs floor"; for the hot cells: vs spread customers).
FLOOR_OF = {
    "check": "floor check",
    "track": "floor track",
    "batch track": "floor batch track",
    "hot track": "track",
    "hot batch track": "batch track",
}

# Set in the parent before the client processes fork.
CONFIG: dict[str, Any] = {}


def bench_worker(client: harness.Client, worker_id: str, deadline: float) -> list[tuple]:
    """Call one endpoint in a loop; records (latency ms, status, deductions)."""
    tokens: list[str] = CONFIG["tokens"]
    process, thread = (int(part) for part in worker_id[1:].split("t"))
    token = tokens[0 if CONFIG["hot"] else (thread * CONFIG["processes"] + process) % len(tokens)]
    path = CONFIG["path"]
    records = []
    sequence = 0
    while time.time() < deadline:
        if path.endswith("batch"):
            sequence += 1
            size = CONFIG["batch_size"]
            body: dict[str, Any] = {
                "events": [
                    {
                        "feature": "messages",
                        "idempotencyKey": f"{CONFIG['run']}-{worker_id}-{sequence}-{i}",
                    }
                    for i in range(size)
                ]
            }
            status, payload, ms = client.post(path, body, token)
            results = payload["results"] if status == 200 else []
            # Deductions: events newly accepted (every key is new: a replay would be cheaper).
            accepted = sum(1 for r in results if r["ok"] and not r["replayed"])
        else:
            # Each endpoint's own body: check takes no amount.
            body = {"feature": "messages"}
            if not path.endswith("check"):
                body["amount"] = 1
            status, _, ms = client.post(path, body, token)
            accepted = 1 if status == 201 else 0
        records.append((ms, status, accepted))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6, help="per cell, over all rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--only", nargs="*", choices=list(ENDPOINTS), default=list(ENDPOINTS))
    parser.add_argument(
        "--database", default="kernia_bench_http", help="a throwaway name (dropped, recreated)"
    )
    args = parser.parse_args()
    database = f"{PG_URL_BASE}/{args.database}"

    spec = {"groups": {"bench": {"users": CUSTOMERS, "included": 10**15, "overage": False}}}
    CONFIG["tokens"] = harness.prepare(database, spec)["bench"]
    CONFIG["batch_size"] = args.batch_size
    load = os.getloadavg()[0]
    print(
        f"gunicorn {args.workers} workers x {args.threads} threads, PostgreSQL, "
        f"{os.cpu_count()} CPUs, load average {load:.2f} before the run, {args.seconds:.0f} s "
        f"per cell in {args.rounds} alternating rounds (median round)"
    )
    # Cells alternate floor and ours within each round and report the median round, so a
    # neighbour's burst of load on this shared machine skews both sides alike. Every other
    # round runs the cells in reverse, so no cell always follows the same one (at
    # concurrency 1 two cells of the same code differed by 5-15% by their place alone).
    rounds: dict[tuple[str, int], list[tuple[list[tuple], float]]] = {}
    server = harness.Gunicorn(
        database, settings_module="bench.floor_settings", workers=args.workers, threads=args.threads
    )
    with harness.serving(server):
        for concurrency in args.concurrency:
            for round_number in range(args.rounds):
                cells = args.only if round_number % 2 == 0 else args.only[::-1]
                for name in cells:
                    CONFIG["path"] = ENDPOINTS[name]
                    CONFIG["hot"] = name.startswith("hot ")
                    CONFIG["processes"] = max(1, min(4, concurrency))
                    CONFIG["run"] = CONFIG.get("run", 0) + 1  # idempotency keys new per drive
                    harness.drive(bench_worker, server.port, concurrency=concurrency, seconds=0.3)
                    CONFIG["run"] += 1
                    rounds.setdefault((name, concurrency), []).append(
                        harness.drive(
                            bench_worker,
                            server.port,
                            concurrency=concurrency,
                            seconds=args.seconds / args.rounds,
                            processes=CONFIG["processes"],
                        )
                    )
    results: dict[tuple[str, int], dict[str, float]] = {}
    for key, runs in rounds.items():
        records = [record for run, _ in runs for record in run]
        latencies = [ms for ms, _, _ in records]
        results[key] = {
            "rps": statistics.median(len(run) / elapsed for run, elapsed in runs),
            "p50": harness.percentile(latencies, 0.5),
            "p99": harness.percentile(latencies, 0.99),
            "deductions": statistics.median(
                sum(d for _, _, d in run) / elapsed for run, elapsed in runs
            ),
            "errors": sum(1 for _, status, _ in records if status >= 300),
        }
    print()
    print("| endpoint | concurrency | requests/s | p50 ms | p99 ms | vs floor | deductions/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (name, concurrency), r in results.items():
        floor = results.get((FLOOR_OF.get(name, ""), concurrency))
        ratio = f"{r['rps'] / floor['rps']:.0%}" if floor else ""
        deductions = f"{r['deductions']:,.0f}" if "track" in name else ""
        errors = f" ({r['errors']:.0f} errors)" if r["errors"] else ""
        print(
            f"| {name} | {concurrency} | {r['rps']:,.0f}{errors} | {r['p50']:.1f} | "
            f"{r['p99']:.1f} | {ratio} | {deductions} |"
        )


if __name__ == "__main__":
    main()
