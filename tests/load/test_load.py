"""Load with exactness: gunicorn workers + PostgreSQL, many concurrent clients, then audit.

Client processes track (single and batch), check and retry idempotently for a
bounded time against customers whose balance runs out (overage off) and customers
with overage on. Afterwards: no 5xx, no balance below zero where overage is off,
every accepted track has exactly one ledger row (with the event id the client was
given), replays answered the first event, and the ledger audit finds no drift.

Runs in the PostgreSQL leg of CI (``-m load`` selects it). As a script, with figures::

    .venv/bin/python -m tests.load.test_load --seconds 10 --concurrency 16
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from typing import Any

import pytest

from bench import http_harness as harness

pytestmark = [pytest.mark.postgres, pytest.mark.load]

PG_BASE = os.environ.get("PG_URL_BASE", harness.DEFAULT_PG)
LOAD_DB = f"{PG_BASE}/{os.environ.get('KERNIA_LOAD_DATABASE', 'kernia_load')}"
TRACK = "/api/auth/billing/track"
CHECK = "/api/auth/billing/check"
BATCH = "/api/auth/billing/track/batch"
SPEC = {
    "groups": {
        "capped": {"users": 6, "included": 120, "overage": False},
        "overage": {"users": 3, "included": 50, "overage": True},
    }
}
BATCH_SIZE = 20

# Set by run() in the parent before the client processes fork.
TOKENS: dict[str, list[str]] = {}


def load_worker(client: harness.Client, worker_id: str, deadline: float) -> list[dict[str, Any]]:
    """One client loop: 55% track, 15% retry of an earlier track, 20% check, 10% batch."""
    rng = random.Random(worker_id)
    users = [(group, token) for group, tokens in TOKENS.items() for token in tokens]
    sent: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    sequence = 0
    while True:
        if time.time() >= deadline:
            return records
        roll = rng.random()
        group, token = rng.choice(users)
        if roll < 0.55 or (roll < 0.70 and not sent):
            sequence += 1
            body = {"feature": "messages", "amount": rng.randint(1, 3)}
            body["idempotencyKey"] = f"{worker_id}-{sequence}"
            status, payload, ms = client.post(TRACK, body, token)
            record = {"kind": "track", "status": status, "ms": ms, "token": token, **body}
            record["group"] = group
            record["eventId"] = payload.get("eventId") if status == 201 else None
            record["code"] = payload.get("error", {}).get("code") if status >= 400 else None
            sent.append(record)
        elif roll < 0.70:
            first = rng.choice(sent)
            body = {k: first[k] for k in ("feature", "amount", "idempotencyKey")}
            status, payload, ms = client.post(TRACK, body, first["token"])
            record = {"kind": "retry", "status": status, "ms": ms, "first": first, **body}
            record["eventId"] = payload.get("eventId") if status == 201 else None
            record["replayed"] = payload.get("replayed") if status == 201 else None
        elif roll < 0.90:
            status, payload, ms = client.post(CHECK, {"feature": "messages"}, token)
            record = {"kind": "check", "status": status, "ms": ms}
        else:
            events = []
            for _ in range(BATCH_SIZE):
                sequence += 1
                events.append(
                    {
                        "feature": "messages",
                        "amount": rng.randint(1, 3),
                        "idempotencyKey": f"{worker_id}-{sequence}",
                    }
                )
            status, payload, ms = client.post(BATCH, {"events": events}, token)
            record = {"kind": "batch", "status": status, "ms": ms, "token": token}
            record["group"] = group
            record["events"] = events
            record["results"] = payload.get("results") if status == 200 else None
        records.append(record)


def run(*, seconds: float, concurrency: int, workers: int = 4) -> dict[str, Any]:
    """Prepare, serve, drive and verify; returns figures and every problem found."""
    tokens = harness.prepare(LOAD_DB, SPEC)
    TOKENS.clear()
    TOKENS.update(tokens)
    with harness.serving(harness.Gunicorn(LOAD_DB, workers=workers, threads=4)) as server:
        records, elapsed = harness.drive(
            load_worker, server.port, concurrency=concurrency, seconds=seconds
        )
    report = verify(records, elapsed, tokens)
    if report["problems"]:
        report["server_log"] = server.log_tail()
    return report


def verify(records: list[dict[str, Any]], elapsed: float, tokens: dict[str, list[str]]) -> dict:
    import psycopg

    problems: list[str] = []
    statuses = Counter(r["status"] for r in records)
    problems += [f"{count} answers with status {s}" for s, count in statuses.items() if s >= 500]

    # What the clients were told was accepted: (token, key) -> (eventId, amount).
    accepted: dict[tuple[str, str], tuple[int, int]] = {}
    for record in records:
        if record["kind"] == "track" and record["status"] == 201:
            accepted[(record["token"], record["idempotencyKey"])] = (
                record["eventId"],
                record["amount"],
            )
        elif record["kind"] == "track" and record["status"] != 402:
            problems.append(f"track answered {record['status']} {record.get('code')}")
        elif record["kind"] == "batch":
            if record["status"] != 200:
                problems.append(f"batch answered {record['status']}")
                continue
            for event, result in zip(record["events"], record["results"], strict=True):
                if result["ok"]:
                    key = (record["token"], event["idempotencyKey"])
                    accepted[key] = (result["eventId"], event["amount"])
                elif result["error"]["code"] != "insufficient_balance":
                    problems.append(f"batch event refused: {result['error']}")
    for record in records:
        if record["kind"] != "retry":
            continue
        first = record["first"]
        if first["status"] == 201:
            if record["status"] != 201 or not record["replayed"]:
                problems.append(f"retry of an accepted track answered {record['status']}")
            elif record["eventId"] != first["eventId"]:
                problems.append("a retry answered another event than the first")
        elif record["status"] not in (201, 402):
            problems.append(f"retry answered {record['status']}")

    group_of = {token: group for group, group_tokens in tokens.items() for token in group_tokens}
    parsed = harness.urlparse(LOAD_DB)
    with psycopg.connect(
        host=parsed.hostname,
        port=parsed.port,
        user=parsed.username,
        dbname=parsed.path.lstrip("/"),
    ) as db:
        rows = db.execute(
            "SELECT t.key, ev.idempotency_key, ev.id, ev.amount FROM kernia_billing_usageevent ev "
            "JOIN kernia_billing_billingcustomer c ON c.id = ev.customer_id "
            "JOIN authtoken_token t ON t.user_id::text = c.owner_id"
        ).fetchall()
        balances = db.execute(
            "SELECT t.key, e.included, e.usage, e.allow_overage FROM kernia_billing_entitlement e "
            "JOIN kernia_billing_billingcustomer c ON c.id = e.customer_id "
            "JOIN authtoken_token t ON t.user_id::text = c.owner_id"
        ).fetchall()
    ledger: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for token, key, event_id, amount in rows:
        ledger.setdefault((token, key), []).append((event_id, amount))
    duplicated = [key for key, found in ledger.items() if len(found) != 1]
    problems += [f"{len(duplicated)} keys with more than one ledger row"] if duplicated else []
    missing = [key for key in accepted if key not in ledger]
    problems += [f"{len(missing)} accepted tracks without a ledger row"] if missing else []
    unreported = [key for key in ledger if key not in accepted]
    problems += [f"{len(unreported)} ledger rows nobody was told about"] if unreported else []
    wrong_id = [
        key for key, (event_id, _) in accepted.items() if ledger.get(key, [(0,)])[0][0] != event_id
    ]
    problems += [f"{len(wrong_id)} accepted tracks whose eventId differs"] if wrong_id else []
    used: Counter[str] = Counter()
    for (token, _), (_, amount) in accepted.items():
        used[token] += amount
    for token, included, usage, allow_overage in balances:
        if not allow_overage and usage > included:
            problems.append(f"{group_of[token]} balance below zero: {included - usage}")
        if usage != used[token]:
            problems.append(f"usage {usage} != accepted amounts {used[token]}")
    overdrawn = sum(1 for _, included, usage, overage in balances if overage and usage > included)
    drift = harness.audit(LOAD_DB)
    problems += [f"ledger drift: {d}" for d in drift]

    by_kind: dict[str, list[float]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record["ms"])
    exhausted = sum(
        1 for _, included, usage, overage in balances if not overage and usage == included
    )
    return {
        "problems": problems,
        "requests": len(records),
        "statuses": dict(statuses),
        "deductions": len(accepted),
        "deductions_per_s": len(accepted) / elapsed,
        "requests_per_s": len(records) / elapsed,
        "latency_ms": {
            kind: {"p50": harness.percentile(ms, 0.5), "p99": harness.percentile(ms, 0.99)}
            for kind, ms in sorted(by_kind.items())
        },
        "capped_exhausted": exhausted,
        "overage_overdrawn": overdrawn,
    }


def test_concurrent_load_is_exact(capsys):
    seconds = float(os.environ.get("KERNIA_LOAD_SECONDS", "8"))
    report = run(seconds=seconds, concurrency=int(os.environ.get("KERNIA_LOAD_CONCURRENCY", "12")))
    with capsys.disabled():
        print(f"\nload: {format_report(report)}")
    assert report["problems"] == [], report.get("server_log")
    assert report["deductions"] > 100
    # The run pushed every capped customer to its limit and the overage ones past it.
    assert report["capped_exhausted"] == SPEC["groups"]["capped"]["users"]
    assert report["overage_overdrawn"] == SPEC["groups"]["overage"]["users"]
    assert 402 in report["statuses"]


def format_report(report: dict[str, Any]) -> str:
    latency = ", ".join(
        f"{kind} p50 {v['p50']:.1f} ms / p99 {v['p99']:.1f} ms"
        for kind, v in report["latency_ms"].items()
    )
    return (
        f"{report['requests']} requests ({report['requests_per_s']:.0f}/s), "
        f"{report['deductions']} exact deductions ({report['deductions_per_s']:.0f}/s); "
        f"statuses {report['statuses']}; {latency}; problems: {report['problems'] or 'none'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    arguments = parser.parse_args()
    result = run(
        seconds=arguments.seconds, concurrency=arguments.concurrency, workers=arguments.workers
    )
    print(format_report(result))
    raise SystemExit(1 if result["problems"] else 0)
