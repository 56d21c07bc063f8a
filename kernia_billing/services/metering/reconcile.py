"""Stripe's meter totals against our outbox, per customer, feature and period.

For each customer and metered feature with reported overage, and each period (the
entitlement's current period, the one Stripe invoices with a ``billing`` reset), the
units tracks sent (``sent``) are compared with Stripe's meter event summary over the same
``[start, end)``. Units still queued or parked are shown next to them: they are not a
difference Stripe can be blamed for, the sender (or an operator) owes them.

``fix`` sends what Stripe is missing as one meter event whose identifier is derived
from (customer, meter, period, units sent), so running the fix twice over the same
state is de-duplicated by Stripe and by our unique identifier: never billed twice. A
surplus in Stripe is reported, not fixed (cancel the events or credit the customer).
Meter event summaries on live Stripe can lag the events by a few minutes: reconcile
after the queue has drained.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import QuerySet, Sum
from django.utils import timezone

from ...conf import billing_settings
from ...models import (
    BillingCustomer,
    Entitlement,
    OverageReport,
    ReportKind,
    ReportStatus,
)
from .. import stripe_gateway
from .sender import resolve_targets, send_pending

__all__ = ["MeterDrift", "reconcile_meters"]


@dataclass(frozen=True, slots=True)
class MeterDrift:
    customer_id: int
    feature: str
    meter: str
    period_start: datetime
    period_end: datetime
    sent: int
    in_stripe: int
    queued: int
    parked: int
    fixed: bool = False

    @property
    def difference(self) -> int:
        """Units we sent that Stripe does not have (negative: Stripe has more)."""
        return self.sent - self.in_stripe

    def __str__(self) -> str:
        text = (
            f"customer {self.customer_id} {self.feature} ({self.meter}) "
            f"{self.period_start:%Y-%m-%d}..{self.period_end:%Y-%m-%d}: sent {self.sent}, "
            f"Stripe has {self.in_stripe}, difference {self.difference:+d}"
        )
        if self.queued or self.parked:
            text += f"; {self.queued} queued, {self.parked} parked"
        if self.fixed:
            text += " (missing units sent)"
        return text


def _units(rows: QuerySet[OverageReport], *statuses: str) -> int:
    total = rows.filter(status__in=statuses).aggregate(total=Sum("value"))["total"]
    return int(total or 0)


def reconcile_meters(
    *, fix: bool = False, customer_ids: list[int] | None = None
) -> list[MeterDrift]:
    """Every (customer, feature, period) whose Stripe total differs from ours."""
    pairs = OverageReport.objects.exclude(status=ReportStatus.UNBILLED)
    if customer_ids is not None:
        pairs = pairs.filter(customer_id__in=customer_ids)
    keys = set(pairs.values_list("customer_id", "feature_id").distinct())
    customers = {c.pk: c for c in BillingCustomer.objects.filter(pk__in={c for c, _ in keys})}
    entitlements = {
        (e.customer_id, e.feature_id): e
        for e in Entitlement.objects.filter(
            customer_id__in=customers.keys(), feature_id__in={f for _, f in keys}
        ).select_related("feature")
    }
    targets = resolve_targets((customers[c].plan_id, f) for c, f in keys)
    drifts = []
    for customer_id, feature_id in sorted(keys):
        customer = customers[customer_id]
        entitlement = entitlements.get((customer_id, feature_id))
        target = targets[(customer.plan_id, feature_id)]
        if entitlement is None or target.meter is None or not customer.stripe_customer_id:
            continue
        start, end = _period(customer, entitlement)
        rows = OverageReport.objects.filter(
            customer_id=customer_id,
            feature_id=feature_id,
            occurred_at__gte=start,
            occurred_at__lt=end,
        )
        # What Stripe should hold: the overage of tracks. Fix rows are not added: they
        # stand in for units of tracks Stripe lost.
        sent = _units(rows.exclude(kind=ReportKind.FIX), ReportStatus.SENT)
        in_stripe = _stripe_units(target.meter.stripe_id, customer.stripe_customer_id, start, end)
        queued = _units(rows, ReportStatus.PENDING)
        parked = _units(rows, ReportStatus.PARKED)
        if sent == in_stripe and not queued and not parked:
            continue
        fixed = False
        if fix and sent > in_stripe:
            # The fix's identifier names the units tracks sent, so a rerun over a
            # lagging summary finds the same fix and sends nothing.
            fixed = _send_missing(
                customer, feature_id, target.meter.stripe_id, start, end, sent, sent - in_stripe
            )
        drifts.append(
            MeterDrift(
                customer_id=customer_id,
                feature=entitlement.feature.key,
                meter=target.meter.stripe_id,
                period_start=start,
                period_end=end,
                sent=sent,
                in_stripe=in_stripe,
                queued=queued,
                parked=parked,
                fixed=fixed,
            )
        )
    return drifts


def _period(customer: BillingCustomer, entitlement: Entitlement) -> tuple[datetime, datetime]:
    start = entitlement.period_start or customer.current_period_start
    end = entitlement.next_reset_at or customer.current_period_end
    now = timezone.now()
    if start is None:
        start = now - timedelta(days=35)
    if end is None or end <= start:
        end = now + timedelta(minutes=5)
    return start, end


def _stripe_units(meter_id: str, stripe_customer_id: str, start: datetime, end: datetime) -> int:
    summaries = stripe_gateway.meter_event_summaries(
        meter_id,
        stripe_customer_id=stripe_customer_id,
        start_time=_whole_minutes(start),
        end_time=_whole_minutes(end, up=True),
    )
    return int(sum(float(s.get("aggregated_value") or 0) for s in summaries))


def _whole_minutes(moment: datetime, *, up: bool = False) -> int:
    """Stripe wants summary bounds on whole minutes."""
    seconds = int(moment.timestamp())
    rounded = seconds - seconds % 60
    return rounded + 60 if up and rounded != seconds else rounded


def _send_missing(
    customer: BillingCustomer,
    feature_id: int,
    meter_id: str,
    start: datetime,
    end: datetime,
    sent: int,
    missing: int,
) -> bool:
    prefix = billing_settings.METER_IDENTIFIER_PREFIX
    identifier = f"{prefix}-fix-{customer.pk}-{meter_id}-{int(start.timestamp())}-{sent}"
    moment = min(timezone.now(), end - timedelta(seconds=1))
    report, created = OverageReport.objects.get_or_create(
        identifier=identifier,
        defaults={
            "customer": customer,
            "feature_id": feature_id,
            "kind": ReportKind.FIX,
            "value": missing,
            "occurred_at": moment,
        },
    )
    if created:
        send_pending(customer_id=customer.pk, ignore_backoff=True)
        report.refresh_from_db()
    return created and report.status == ReportStatus.SENT
