"""The partitioned ledger against the plain one (PostgreSQL): conversion time, track, history.

Usage::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hc_bench_partition \\
        .venv/bin/python bench/bench_partition.py --rows 300000

Builds the database of ``bench/bench_scale.py`` (the ``DATABASE_URL``'s name, dropped at
the end), times on the plain ledger track (with and without an idempotency key), the
busy customer's first history page and the ledger audit (as it runs, and with
PostgreSQL's JIT left on as it ran before: the second of two alternating runs each),
converts it with ``kernia_partition_ledger``'s code (timed), and times the same again.
Prints each figure and the ratio partitioned / plain. A figure, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from django.db import connection

from bench.bench_scale import build, timed


def measure(busy: int, runs: int) -> dict[str, float]:
    from django.contrib.auth import get_user_model

    from kernia_billing import selectors
    from kernia_billing.models import BillingCustomer
    from kernia_billing.services import usage
    from kernia_billing.services.ledger_audit import _audit_ledger, audit_ledger

    # The owner as a request has it (an unsaved user with the owner's id): track's
    # one-statement path, as in production.
    owner = get_user_model()(pk=int(BillingCustomer.objects.get(pk=busy).owner_id))
    history = selectors.usage_events(busy)
    figures = {
        "track p50 (ms)": timed(lambda: usage.track(owner, "messages", 1), runs)[0],
        "keyed track p50 (ms)": timed(
            lambda: usage.track(owner, "messages", 1, idempotency_key=uuid.uuid4().hex), runs
        )[0],
        "first history page p50 (ms)": timed(lambda: list(history[:51]), 20)[0],
    }
    # The audit as it ran before it turned JIT off (PostgreSQL's default, jit = on),
    # then as it runs now, alternating in the same run.
    for _ in range(2):
        start = time.perf_counter()
        assert (
            _audit_ledger(
                fix=False, customer_ids=None, batch_size=1000, after_entitlement=0, progress=None
            )
            == []
        )
        figures["ledger audit, JIT on: before (s)"] = time.perf_counter() - start
        start = time.perf_counter()
        assert audit_ledger() == []
        figures["ledger audit (s)"] = time.perf_counter() - start
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="Keep the database at the end.")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("The partition benchmark runs on PostgreSQL (DATABASE_URL).")
    from kernia_billing.services.history.partitions import partition_ledger, partitions

    busy = build(args.rows, 365)  # as documented: over 365 days
    try:
        plain = measure(busy, args.runs)
        start = time.perf_counter()
        partition_ledger(months_ahead=1)
        took = time.perf_counter() - start
        print(
            f"| conversion of {args.rows:,} rows | {took:.1f} s, {len(partitions())} partitions |"
        )
        partitioned = measure(busy, args.runs)
        for name, before in plain.items():
            after = partitioned[name]
            print(
                f"| {name} | plain {before:.2f}, partitioned {after:.2f}, x{after / before:.2f} |"
            )
    finally:
        if not args.keep:
            connection.creation.destroy_test_db(
                connection.settings_dict["NAME"], verbosity=0, keepdb=False
            )


if __name__ == "__main__":
    main()
