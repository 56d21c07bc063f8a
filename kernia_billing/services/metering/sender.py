"""The sender: outbox rows become Stripe meter events, each billed exactly once.

A batch of pending rows is claimed in one transaction (``SELECT ... FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so concurrent senders never take the same row; SQLite has one
writer at a time), each row is sent with its own stable ``identifier`` and its own
``timestamp`` (the time of the usage), then the batch is marked in the same
transaction. A sender that dies between Stripe's answer and the mark leaves its rows
pending: the next sender resends the same identifiers and Stripe de-duplicates them.

- 429 and 5xx/timeouts: the row waits (exponential backoff, at most 5 minutes) and the
  batch stops, since Stripe is struggling; nothing is lost.
- Any other refusal (4xx) parks the row with Stripe's reason (admin, health view);
  :func:`requeue` sends it again after a fix.
- A feature whose plan maps no overage price is not billed (``unbilled``); system
  check W010 warns about it.

Outbox rows lock nothing but themselves, and no writer of balances touches them, so
the sender is outside the lock order of ``services/locking.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from ...conf import billing_settings
from ...exceptions import StripeRefused, StripeUnavailable
from ...models import BillingCustomer, Meter, OverageReport, PlanFeature, ReportStatus
from .. import stripe_gateway

__all__ = ["SendSummary", "Target", "requeue", "resolve_targets", "run_forever", "send_pending"]

MAX_BACKOFF_SECONDS = 300


@dataclass(frozen=True, slots=True)
class SendSummary:
    sent: int = 0
    parked: int = 0
    unbilled: int = 0
    deferred: int = 0

    def __add__(self, other: SendSummary) -> SendSummary:
        return SendSummary(
            self.sent + other.sent,
            self.parked + other.parked,
            self.unbilled + other.unbilled,
            self.deferred + other.deferred,
        )

    @property
    def handled(self) -> int:
        return self.sent + self.parked + self.unbilled + self.deferred


@dataclass(frozen=True, slots=True)
class Target:
    """Where a row's units go: the meter of its plan feature's overage price."""

    meter: Meter | None
    problem: str = ""
    unbilled: bool = False


class _Throttle:
    """At most ``rate`` requests per second from this process."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if now < self.next_at:
            time.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = max(self.next_at, now) + self.interval


def resolve_targets(
    pairs: Iterable[tuple[int | None, int]],
) -> dict[tuple[int | None, int], Target]:
    """For each ``(plan id, feature id)``: the meter that bills its overage, or why none."""
    wanted = set(pairs)
    plan_ids = {plan for plan, _ in wanted if plan is not None}
    features = {feature for _, feature in wanted}
    plan_features: dict[tuple[int | None, int], PlanFeature] = {
        (pf.plan_id, pf.feature_id): pf
        for pf in PlanFeature.objects.filter(
            plan_id__in=plan_ids, feature_id__in=features
        ).select_related("overage_price")
    }
    meter_ids = {
        pf.overage_price.stripe_meter_id for pf in plan_features.values() if pf.overage_price
    }
    meters = {m.stripe_id: m for m in Meter.objects.filter(stripe_id__in=meter_ids)}
    targets: dict[tuple[int | None, int], Target] = {}
    for key in wanted:
        pf = plan_features.get(key)
        if pf is None or pf.overage_price is None:
            targets[key] = Target(None, "The plan maps no overage price to this feature.", True)
            continue
        meter_id = pf.overage_price.stripe_meter_id
        meter = meters.get(meter_id)
        if meter is None:
            problem = (
                f"The overage price {pf.overage_price.stripe_id} bills meter "
                f"{meter_id or '(none)'}, which is not imported; sync the catalog."
            )
            targets[key] = Target(None, problem)
        else:
            targets[key] = Target(meter)
    return targets


def send_pending(
    *,
    limit: int | None = None,
    customer_id: int | None = None,
    now: datetime | None = None,
    ignore_backoff: bool = False,
) -> SendSummary:
    """Send pending outbox rows (all of them, or ``limit``, or one customer's)."""
    total = SendSummary()
    throttle = _Throttle(billing_settings.METER_EVENTS_PER_SECOND)
    batch = max(1, billing_settings.METER_SEND_BATCH)
    while limit is None or total.handled < limit:
        size = batch if limit is None else min(batch, limit - total.handled)
        summary, stop = _send_batch(size, customer_id, now, ignore_backoff, throttle)
        total += summary
        if stop or summary.handled < size:
            break
    return total


def _claim(
    size: int, customer_id: int | None, now: datetime, ignore_backoff: bool
) -> list[OverageReport]:
    rows = OverageReport.objects.select_for_update(skip_locked=True).filter(
        status=ReportStatus.PENDING
    )
    if not ignore_backoff:
        rows = rows.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    if customer_id is not None:
        rows = rows.filter(customer_id=customer_id)
    return list(rows.order_by("id")[:size])


def _send_batch(
    size: int,
    customer_id: int | None,
    now: datetime | None,
    ignore_backoff: bool,
    throttle: _Throttle,
) -> tuple[SendSummary, bool]:
    sent = parked = unbilled = deferred = 0
    stop = False
    with transaction.atomic():
        moment = now or timezone.now()
        rows = _claim(size, customer_id, moment, ignore_backoff)
        if not rows:
            return SendSummary(), True
        customers = {
            c.pk: c
            for c in BillingCustomer.objects.filter(pk__in={r.customer_id for r in rows}).only(
                "pk", "plan_id", "stripe_customer_id"
            )
        }
        targets = resolve_targets((customers[r.customer_id].plan_id, r.feature_id) for r in rows)
        for row in rows:
            customer = customers[row.customer_id]
            target = targets[(customer.plan_id, row.feature_id)]
            if stop:
                break
            if target.meter is None:
                row.status = ReportStatus.UNBILLED if target.unbilled else ReportStatus.PARKED
                row.last_error = target.problem
                unbilled += target.unbilled
                parked += not target.unbilled
                continue
            if not customer.stripe_customer_id:
                row.status = ReportStatus.PARKED
                row.last_error = "The customer has no Stripe customer."
                parked += 1
                continue
            row.event_name = target.meter.event_name
            row.stripe_customer_id = customer.stripe_customer_id
            row.attempts += 1
            throttle.wait()
            try:
                stripe_gateway.create_meter_event(
                    event_name=row.event_name,
                    stripe_customer_id=row.stripe_customer_id,
                    value=row.value,
                    timestamp=int(row.occurred_at.timestamp()),
                    identifier=row.identifier,
                    customer_key=target.meter.customer_payload_key,
                    value_key=target.meter.value_payload_key,
                )
            except StripeRefused as error:
                if _already_received(error):
                    pass  # a resend Stripe says it already has: billed once, mark it sent
                elif error.http_status == 429:
                    _defer(row, error, moment)
                    deferred += 1
                    stop = True
                    continue
                else:
                    row.status = ReportStatus.PARKED
                    row.last_error = str(error.message)[:2000]
                    parked += 1
                    continue
            except StripeUnavailable as error:
                _defer(row, error, moment)
                deferred += 1
                stop = True
                continue
            row.status = ReportStatus.SENT
            row.sent_at = timezone.now()
            row.last_error = ""
            sent += 1
        OverageReport.objects.bulk_update(
            rows,
            [
                "status",
                "attempts",
                "next_attempt_at",
                "last_error",
                "event_name",
                "stripe_customer_id",
                "sent_at",
            ],
        )
    return SendSummary(sent, parked, unbilled, deferred), stop


def _already_received(error: StripeRefused) -> bool:
    """Stripe refused a resend because it already holds an event with the identifier."""
    message = str(error.message).lower()
    return "identifier" in message and ("already" in message or "duplicate" in message)


def _defer(row: OverageReport, error: StripeUnavailable, moment: datetime) -> None:
    delay = min(MAX_BACKOFF_SECONDS, 2 ** min(row.attempts, 10))
    row.next_attempt_at = moment + timedelta(seconds=delay)
    row.last_error = str(error.message)[:2000]


def requeue(report_ids: Iterable[int]) -> int:
    """Send parked (or unbilled) rows again, e.g. after fixing the catalog."""
    return OverageReport.objects.filter(
        pk__in=list(report_ids), status__in=[ReportStatus.PARKED, ReportStatus.UNBILLED]
    ).update(status=ReportStatus.PENDING, next_attempt_at=None, last_error="")


def run_forever(stop: threading.Event, *, idle_seconds: float = 1.0) -> SendSummary:
    """The long-running sender: send, sleep when idle, return once ``stop`` is set."""
    total = SendSummary()
    while not stop.is_set():
        summary = send_pending(limit=billing_settings.METER_SEND_BATCH * 10)
        total += summary
        if summary.sent == 0 or summary.deferred:
            stop.wait(idle_seconds)  # idle, or Stripe is struggling: let it breathe
    return total
