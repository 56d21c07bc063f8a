"""Soak: mixed traffic for the same customers on gunicorn + PostgreSQL, then audit.

Client processes check, track (with idempotency keys, and retries of them), batch-track
and read ``billing/customer``; meanwhile a Stripe driver in this process renews the same
customers' subscriptions in a fake Stripe (each customer's period really ends during the
run, so lazy resets and the renewal webhook race) and changes their plans, delivering
each signed event to dj-stripe's endpoint on the server several times at once, plus
later duplicates and stale, out-of-order redeliveries. Clients favour the customer whose
renewal is nearest. Afterwards: no answer >= 500 (webhooks included), no deadlock in
the PostgreSQL log for the soak's database, every accepted track has exactly one ledger
row, no ledger row took a balance below zero, the ledger audit finds no drift, and each
customer's plan and entitlement period follow its subscription in Stripe.

Runs in the PostgreSQL leg of CI (``-m load``; ~25 s). As a script, with figures::

    .venv/bin/python -m tests.load.test_soak --seconds 600 --concurrency 8 --workers 3
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from bench import http_harness as harness
from bench import soak_harness as soak
from kernia_billing.periods import add_months
from kernia_billing.testing import FakeStripe
from tests.load.test_load import BATCH, CHECK, TRACK

pytestmark = [pytest.mark.postgres, pytest.mark.load]

PG_BASE = os.environ.get("PG_URL_BASE", harness.DEFAULT_PG)
SOAK_DB = f"{PG_BASE}/{os.environ.get('KERNIA_SOAK_DATABASE', 'kernia_soak_http')}"
CUSTOMER = "/api/auth/billing/customer"
INCLUDED = {"free": 50, "pro": 600, "business": 1500}
COPIES = 3  # concurrent deliveries of each renewal and plan change
BATCH_SIZE = 10
PLAN_CHANGE_EVERY = 4.0  # seconds

# Set by run() in the parent before the client processes fork.
TOKENS: list[str] = []
BOUNDARIES: list[float] = []


def soak_worker(client: harness.Client, worker_id: str, deadline: float) -> list[dict[str, Any]]:
    """45% track, 15% retry, 25% check, 10% batch, 5% billing/customer; hot customers first."""
    rng = random.Random(worker_id)
    sent: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    sequence = 0
    while time.time() < deadline:
        if rng.random() < 0.5:  # the customer whose renewal is nearest, now
            now = time.time()
            token = TOKENS[min(range(len(TOKENS)), key=lambda i: abs(BOUNDARIES[i] - now))]
        else:
            token = rng.choice(TOKENS)
        roll = rng.random()
        if roll < 0.45 or (roll < 0.60 and not sent):
            sequence += 1
            body = {"feature": "messages", "amount": rng.randint(1, 3)}
            body["idempotencyKey"] = f"{worker_id}-{sequence}"
            status, payload, ms = client.post(TRACK, body, token)
            record = {"kind": "track", "status": status, "ms": ms, "token": token, **body}
            record["eventId"] = payload.get("eventId") if status == 201 else None
            record["balance"] = payload.get("balance") if status == 201 else None
            record["code"] = payload.get("error", {}).get("code") if status >= 400 else None
            sent.append(record)
        elif roll < 0.60:
            first = rng.choice(sent)
            body = {k: first[k] for k in ("feature", "amount", "idempotencyKey")}
            status, payload, ms = client.post(TRACK, body, first["token"])
            record = {"kind": "retry", "status": status, "ms": ms, "first": first, **body}
            record["eventId"] = payload.get("eventId") if status == 201 else None
            record["replayed"] = payload.get("replayed") if status == 201 else None
        elif roll < 0.85:
            status, payload, ms = client.post(CHECK, {"feature": "messages"}, token)
            record = {"kind": "check", "status": status, "ms": ms}
        elif roll < 0.95:
            events = []
            for _ in range(BATCH_SIZE):
                sequence += 1
                amount = rng.randint(1, 3)
                events.append(
                    {
                        "feature": "messages",
                        "amount": amount,
                        "idempotencyKey": f"{worker_id}-{sequence}",
                    }
                )
            status, payload, ms = client.post(BATCH, {"events": events}, token)
            record = {"kind": "batch", "status": status, "ms": ms, "token": token}
            record["events"] = events
            record["results"] = payload.get("results") if status == 200 else None
        else:
            status, payload, ms = client.call("GET", CUSTOMER, token=token)
            record = {"kind": "customer", "status": status, "ms": ms}
        records.append(record)
    return records


class StripeDriver(threading.Thread):
    """Renews each customer once its period ended, changes plans, delivers every event."""

    def __init__(
        self,
        fake: FakeStripe,
        deliverer: soak.Deliverer,
        world: dict[str, Any],
        subscriptions: list[str],
        deadline: float,
    ) -> None:
        super().__init__(name="soak-stripe-driver", daemon=True)
        self.fake, self.deliverer, self.world = fake, deliverer, world
        self.subscriptions, self.deadline = subscriptions, deadline
        self.records: list[dict[str, Any]] = []
        self.renewed: set[int] = set()
        self.plan_changes = 0
        self.seen = len(fake.events())
        self.history: dict[str, list[dict[str, Any]]] = {}  # stripe customer -> its events
        self.later: list[tuple[float, dict[str, Any]]] = []  # duplicates to send again
        self.rng = random.Random(7)
        self.pool = ThreadPoolExecutor(COPIES + 6, thread_name_prefix="soak-delivery")
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # reported by the test, not lost in a thread
            self.failure = error
        finally:
            self.pool.shutdown(wait=True)

    def remember(self, events: list[dict[str, Any]]) -> None:
        """Events delivered before the run: candidates for stale redeliveries."""
        for event in events:
            customer = event["data"]["object"].get("customer")
            if customer:
                self.history.setdefault(str(customer), []).append(event)

    def _loop(self) -> None:
        time.sleep(1)  # let the client processes fork before this thread does anything
        last_plan_change = time.time()
        while time.time() < self.deadline:
            self.fake.set_clock(max(self.fake.now(), int(time.time())))
            due = [
                i
                for i, end in enumerate(BOUNDARIES)
                if i not in self.renewed and end <= time.time()
            ]
            if due:
                self._renew(due[0])
            elif time.time() - last_plan_change >= PLAN_CHANGE_EVERY:
                self._change_plan(self.rng.randrange(len(self.subscriptions)))
                last_plan_change = time.time()
            ready = [event for at, event in self.later if at <= time.time()]
            self.later = [(at, event) for at, event in self.later if at > time.time()]
            if ready:
                self._deliver([(event, "duplicate") for event in ready])
            time.sleep(0.2)

    def _new_events(self) -> list[dict[str, Any]]:
        events = self.fake.events()
        new, self.seen = events[self.seen :], len(events)
        return new

    def _renew(self, index: int) -> None:
        self.fake.advance_subscription(self.subscriptions[index])
        self.renewed.add(index)
        new = self._new_events()
        renewal = [e for e in new if e["type"] == "customer.subscription.updated"][-1]
        batch = [(renewal, "renewal")] + [(renewal, "duplicate")] * (COPIES - 1)
        for event in new:
            if event is not renewal:
                copies = 2 if event["type"] == "invoice.paid" else 1
                batch += [(event, "renewal")] + [(event, "duplicate")] * (copies - 1)
        self._deliver(batch + self._stale(index), index)
        self.later.append((time.time() + 2, renewal))

    def _change_plan(self, index: int) -> None:
        sub = self.fake.store.retrieve("subscription", self.subscriptions[index])
        item = sub["items"]["data"][0]
        prices = self.world["prices"]
        other = prices["business"] if item["price"]["id"] == prices["pro"] else prices["pro"]
        self.fake.store.update_subscription(
            sub["id"], {"items": [{"id": item["id"], "price": other}]}
        )
        self.plan_changes += 1
        new = self._new_events()
        batch = [(e, "plan_change") for e in new] + [(e, "duplicate") for e in new] * (COPIES - 1)
        self._deliver(batch + self._stale(index), index)

    def _stale(self, index: int) -> list[tuple[dict[str, Any], str]]:
        """One older event of the same customer, out of order (Stripe retries late)."""
        older = self.history.get(self.world["stripe_customers"][index], [])
        return [(self.rng.choice(older), "stale")] if older else []

    def _deliver(self, batch: list[tuple[dict[str, Any], str]], index: int | None = None) -> None:
        results = list(self.pool.map(lambda pair: self.deliverer.deliver(pair[0]), batch))
        for (event, role), (status, ms) in zip(batch, results, strict=True):
            self.records.append(
                {"kind": "webhook", "role": role, "type": event["type"], "status": status, "ms": ms}
            )
            if role not in ("duplicate", "stale"):
                self.remember([event])


def subscribe(fake: FakeStripe, world: dict[str, Any], start: float, seconds: float) -> list[str]:
    """Each customer on Pro since a month before its boundary; boundaries span the run."""
    subscriptions = []
    BOUNDARIES.clear()
    count = world["customers"]
    for index, customer in enumerate(world["stripe_customers"]):
        target = datetime.fromtimestamp(
            int(start + seconds * (0.1 + 0.7 * index / max(count - 1, 1))), UTC
        )
        fake.set_clock(int(add_months(target, -1).timestamp()))
        sub = fake.create_subscription(customer=customer, items=[{"price": world["prices"]["pro"]}])
        subscriptions.append(sub["id"])
        BOUNDARIES.append(float(sub["items"]["data"][0]["current_period_end"]))
    fake.set_clock(int(time.time()))
    return subscriptions


def run(
    *, seconds: float, concurrency: int, workers: int = 3, customers: int | None = None
) -> dict[str, Any]:
    """Prepare, serve, drive clients and the Stripe driver, verify; figures and problems."""
    customers = customers or max(6, min(40, int(seconds / 15)))
    spec = {"customers": customers, "included": INCLUDED}
    database = harness.urlparse(SOAK_DB).path.lstrip("/")
    log = soak.PostgresLog(database).open()
    with FakeStripe(webhook_delivery=False) as fake:
        world = soak.prepare(SOAK_DB, fake, spec)
        TOKENS[:] = world["tokens"]
        server = harness.Gunicorn(
            SOAK_DB, workers=workers, threads=4, extra_env={"STRIPE_API_BASE": fake.url}
        )
        with harness.serving(server):
            deliverer = soak.Deliverer(fake, server.port, world)
            subscriptions = subscribe(fake, world, time.time() + 3 + 0.3 * customers, seconds)
            setup = [deliverer.deliver(event)[0] for event in fake.events()]
            problems = [f"setup delivery answered {s}" for s in setup if s != 200]
            # Run at least until a few seconds after the last boundary, if setup was slow.
            seconds = max(seconds, max(BOUNDARIES) + 4 - time.time())
            driver = StripeDriver(fake, deliverer, world, subscriptions, time.time() + seconds)
            driver.remember(fake.events())
            driver.start()
            records, elapsed = harness.drive(
                soak_worker, server.port, concurrency=concurrency, seconds=seconds
            )
            driver.join(timeout=120)
        if driver.failure is not None:
            problems.append(f"stripe driver failed: {driver.failure!r}")
        remote = [fake.store.retrieve("subscription", sub) for sub in subscriptions]
    records += driver.records
    report = verify(records, elapsed, world, remote, log)
    report["problems"][:0] = problems
    report.update(
        renewals=len(driver.renewed), plan_changes=driver.plan_changes, customers=customers
    )
    if report["problems"]:
        report["server_log"] = server.log_tail()
    return report


def verify(
    records: list[dict[str, Any]],
    elapsed: float,
    world: dict[str, Any],
    remote: list[dict[str, Any]],
    log: soak.PostgresLog,
) -> dict[str, Any]:
    import psycopg

    problems: list[str] = []
    statuses = Counter(r["status"] for r in records)
    server_errors = sum(count for status, count in statuses.items() if status >= 500)
    problems += [f"{server_errors} answers >= 500"] if server_errors else []
    webhooks = [r for r in records if r["kind"] == "webhook"]
    problems += [
        f"webhook {r['type']} ({r['role']}) answered {r['status']}"
        for r in webhooks
        if r["status"] != 200
    ]

    accepted: dict[tuple[str, str], tuple[int, int]] = {}
    for record in records:
        if record["kind"] == "track" and record["status"] == 201:
            accepted[(record["token"], record["idempotencyKey"])] = (
                record["eventId"],
                record["amount"],
            )
            if record["balance"] < 0:
                problems.append(f"a track was accepted with balance {record['balance']}")
        elif record["kind"] == "track" and record["status"] != 402:
            problems.append(f"track answered {record['status']} {record.get('code')}")
        elif record["kind"] == "batch":
            if record["status"] != 200:
                problems.append(f"batch answered {record['status']}")
                continue
            for event, result in zip(record["events"], record["results"], strict=True):
                if result["ok"]:
                    accepted[(record["token"], event["idempotencyKey"])] = (
                        result["eventId"],
                        event["amount"],
                    )
                elif result["error"]["code"] != "insufficient_balance":
                    problems.append(f"batch event refused: {result['error']}")
        elif record["kind"] in ("check", "customer") and record["status"] != 200:
            problems.append(f"{record['kind']} answered {record['status']}")

    # A retry of a refused track may be accepted later: a renewal or an upgrade gave
    # balance back. Every other retry answers the first event, marked replayed.
    for record in records:
        if record["kind"] != "retry":
            continue
        first, key = record["first"], (record["first"]["token"], record["idempotencyKey"])
        if first["status"] == 201 and (record["status"] != 201 or not record["replayed"]):
            problems.append(f"retry of an accepted track answered {record['status']}")
        elif record["status"] == 201:
            known = accepted.setdefault(key, (record["eventId"], record["amount"]))
            if known[0] != record["eventId"]:
                problems.append("a retry answered another event than the first")
        elif record["status"] != 402:
            problems.append(f"retry answered {record['status']}")

    parsed = harness.urlparse(SOAK_DB)
    with psycopg.connect(
        host=parsed.hostname, port=parsed.port, user=parsed.username, dbname=parsed.path.lstrip("/")
    ) as db:
        ledger_rows = db.execute(
            "SELECT t.key, ev.idempotency_key, ev.id, ev.balance_after "
            "FROM kernia_billing_usageevent ev "
            "JOIN kernia_billing_billingcustomer c ON c.id = ev.customer_id "
            "JOIN authtoken_token t ON t.user_id::text = c.owner_id"
        ).fetchall()
        state = db.execute(
            "SELECT t.key, p.key, c.stripe_subscription_id, c.current_period_start, "
            "c.current_period_end, "
            "e.period_start, e.next_reset_at FROM kernia_billing_billingcustomer c "
            "JOIN authtoken_token t ON t.user_id::text = c.owner_id "
            "LEFT JOIN kernia_billing_plan p ON p.id = c.plan_id "
            "JOIN kernia_billing_entitlement e ON e.customer_id = c.id"
        ).fetchall()
    ledger: dict[tuple[str, str], list[int]] = {}
    for token, key, event_id, balance_after in ledger_rows:
        ledger.setdefault((token, key), []).append(event_id)
        if balance_after < 0:
            problems.append(f"ledger row {event_id} left balance {balance_after}")
    duplicated = [key for key, ids in ledger.items() if len(ids) != 1]
    problems += [f"{len(duplicated)} keys with more than one ledger row"] if duplicated else []
    missing = [key for key in accepted if key not in ledger]
    problems += [f"{len(missing)} accepted tracks without a ledger row"] if missing else []
    unreported = [key for key in ledger if key not in accepted]
    problems += [f"{len(unreported)} ledger rows nobody was told about"] if unreported else []
    wrong = [key for key, (event_id, _) in accepted.items() if ledger.get(key, [0])[0] != event_id]
    problems += [f"{len(wrong)} accepted tracks whose eventId differs"] if wrong else []
    drift = harness.audit(SOAK_DB)
    problems += [f"ledger drift: {d}" for d in drift]

    plan_of_price = {price: plan for plan, price in world["prices"].items()}
    by_sub = {sub["id"]: sub for sub in remote}
    for token, plan, sub_id, start, end, period_start, next_reset in state:
        sub = by_sub.get(sub_id)
        if sub is None:
            problems.append(f"customer {token[:6]} has subscription {sub_id!r}")
            continue
        item = sub["items"]["data"][0]
        truth = (item["current_period_start"], item["current_period_end"])
        if (int(start.timestamp()), int(end.timestamp())) != truth:
            problems.append(f"customer period {start}..{end} != Stripe's {truth}")
        if (period_start, next_reset) != (start, end):
            problems.append(f"entitlement period {period_start}..{next_reset} != {start}..{end}")
        if plan != plan_of_price[item["price"]["id"]]:
            problems.append(f"customer on {plan}, Stripe says {plan_of_price[item['price']['id']]}")

    deadlocks, anywhere = (None, None) if log.unreadable else log.deadlocks()
    problems += [f"{deadlocks} deadlocks in the PostgreSQL log"] if deadlocks else []
    by_kind: dict[str, list[float]] = {}
    for record in records:
        by_kind.setdefault(record["kind"], []).append(record["ms"])
    return {
        "problems": problems,
        "requests": len(records),
        "requests_per_s": len(records) / elapsed,
        "statuses": dict(statuses),
        "server_errors": server_errors,
        "by_kind": {kind: len(ms) for kind, ms in sorted(by_kind.items())},
        "webhooks_by_role": dict(Counter(r["role"] for r in webhooks)),
        "deductions": len(accepted),
        "latency_ms": {
            kind: {"p50": harness.percentile(ms, 0.5), "p99": harness.percentile(ms, 0.99)}
            for kind, ms in sorted(by_kind.items())
        },
        "deadlocks": deadlocks,
        "deadlocks_other_databases": None if anywhere is None else anywhere - (deadlocks or 0),
        "log_unreadable": log.unreadable,
        "drift": len(drift),
    }


def test_soak_mixed_traffic_is_exact(capsys: pytest.CaptureFixture[str]) -> None:
    seconds = float(os.environ.get("KERNIA_SOAK_SECONDS", "25"))
    report = run(seconds=seconds, concurrency=int(os.environ.get("KERNIA_SOAK_CONCURRENCY", "6")))
    with capsys.disabled():
        print(f"\nsoak: {format_report(report)}")
    assert report["problems"] == [], report.get("server_log")
    assert report["renewals"] == report["customers"]
    assert report["plan_changes"] >= 2
    assert report["webhooks_by_role"].get("duplicate", 0) > report["renewals"]
    if report["log_unreadable"]:
        pytest.skip(f"deadlock check skipped: {report['log_unreadable']} (set KERNIA_PG_LOG)")


def format_report(report: dict[str, Any]) -> str:
    latency = ", ".join(
        f"{kind} p50 {v['p50']:.1f} / p99 {v['p99']:.1f} ms"
        for kind, v in report["latency_ms"].items()
    )
    deadlocks = report["log_unreadable"] or f"{report['deadlocks']} deadlocks"
    return (
        f"{report['requests']} requests ({report['requests_per_s']:.0f}/s) "
        f"by kind {report['by_kind']}; "
        f"webhooks {report['webhooks_by_role']}; {report['customers']} customers, "
        f"{report['renewals']} renewals, {report['plan_changes']} plan changes; "
        f"{report['deductions']} accepted deductions; statuses {report['statuses']}; "
        f"{report['server_errors']} 5xx; {deadlocks} "
        f"(other databases: {report['deadlocks_other_databases']}); drift {report['drift']}; "
        f"{latency}; problems: {report['problems'] or 'none'}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--customers", type=int, default=None)
    arguments = parser.parse_args()
    result = run(
        seconds=arguments.seconds,
        concurrency=arguments.concurrency,
        workers=arguments.workers,
        customers=arguments.customers,
    )
    print(format_report(result))
    if result["problems"]:
        print(result.get("server_log", ""))
    raise SystemExit(1 if result["problems"] else 0)
