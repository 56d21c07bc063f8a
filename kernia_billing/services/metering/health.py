"""Is overage billed, and is it reaching Stripe? (system checks, the health view)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Min, Q
from django.utils import timezone

from ...conf import billing_settings
from ...models import FeatureKind, Meter, OverageReport, PlanFeature, ReportStatus

__all__ = ["OverageProblem", "ReportingHealth", "overage_problems", "reporting_health"]


@dataclass(frozen=True, slots=True)
class OverageProblem:
    id: str  # the system check id
    message: str
    hint: str
    plan_feature: PlanFeature


def overage_problems(using: str = "default") -> list[OverageProblem]:
    """Plan features whose overage is not billed, or billed through a broken price."""
    problems = []
    rows = (
        PlanFeature.objects.using(using)
        .filter(feature__kind=FeatureKind.METERED)
        .filter(Q(allow_overage=True) | Q(overage_price__isnull=False))
        .select_related("plan", "feature", "overage_price")
    )
    meters = {m.stripe_id: m for m in Meter.objects.using(using)}
    for pf in rows:
        where = f"Plan {pf.plan.key!r} feature {pf.feature.key!r}"
        price = pf.overage_price
        if price is None:
            problems.append(
                OverageProblem(
                    "kernia_billing.W010",
                    f"{where} allows overage with no overage price: overage is not billed.",
                    "Map an approved metered Stripe price as its overage price (README: "
                    "Billing overage with Stripe meters), or turn allowOverage off.",
                    pf,
                )
            )
            continue
        meter = meters.get(price.stripe_meter_id)
        if meter is None or not meter.is_active or not price.active or price.deleted_in_stripe:
            state = "not imported" if meter is None else meter.status
            problems.append(
                OverageProblem(
                    "kernia_billing.E012",
                    f"{where}: overage price {price.stripe_id} bills meter "
                    f"{price.stripe_meter_id or '(none)'} which is {state}"
                    + ("" if price.active else ", and the price is archived")
                    + ": Stripe refuses its meter events.",
                    "Reactivate the meter in Stripe and sync the catalog, or map another price.",
                    pf,
                )
            )
        if price.unit_amount is None:
            problems.append(
                OverageProblem(
                    "kernia_billing.W015",
                    f"{where}: overage price {price.stripe_id} has no unit amount (tiered or "
                    "decimal): usage corrections past Stripe's 24-hour cancel window cannot "
                    "be credited automatically, and the overage estimate shows no charge.",
                    "Use a per-unit metered price, or credit such corrections in Stripe "
                    "yourself (adjust_usage refuses them).",
                    pf,
                )
            )
        plan_prices = list(pf.plan.plan_prices.select_related("price"))
        if plan_prices and not any(
            p.price.currency == price.currency
            and p.price.recurring_interval == price.recurring_interval
            and p.price.recurring_interval_count == price.recurring_interval_count
            for p in plan_prices
        ):
            problems.append(
                OverageProblem(
                    "kernia_billing.E013",
                    f"{where}: overage price {price.stripe_id} cannot be on the plan's "
                    "subscription (no plan price has its currency and interval).",
                    "A subscription's prices share one currency and interval: create the "
                    "metered price to match the plan's price.",
                    pf,
                )
            )
    return problems


@dataclass(frozen=True, slots=True)
class ReportingHealth:
    window_start: datetime
    pending: int
    oldest_pending_at: datetime | None
    lag_seconds: int
    sent: int
    parked: int
    unbilled: int
    parked_total: int
    alarming: bool
    last_error: str


def reporting_health(now: datetime | None = None) -> ReportingHealth:
    """The outbox at a glance: lag of the oldest unsent row, sent/parked over 24 h."""
    now = now or timezone.now()
    window_start = now - timedelta(hours=24)
    pending = OverageReport.objects.filter(status=ReportStatus.PENDING)
    oldest = pending.aggregate(oldest=Min("occurred_at"))["oldest"]
    lag = int((now - oldest).total_seconds()) if oldest else 0
    recent = OverageReport.objects.filter(created_at__gte=window_start)
    parked_total = OverageReport.objects.filter(status=ReportStatus.PARKED).count()
    last = (
        OverageReport.objects.filter(status__in=[ReportStatus.PARKED, ReportStatus.PENDING])
        .exclude(last_error="")
        .order_by("-id")
        .values_list("last_error", flat=True)
        .first()
    )
    return ReportingHealth(
        window_start=window_start,
        pending=pending.count(),
        oldest_pending_at=oldest,
        lag_seconds=lag,
        sent=recent.filter(status=ReportStatus.SENT).count(),
        parked=recent.filter(status=ReportStatus.PARKED).count(),
        unbilled=recent.filter(status=ReportStatus.UNBILLED).count(),
        parked_total=parked_total,
        alarming=lag > billing_settings.METER_LAG_ALARM_SECONDS or parked_total > 0,
        last_error=last or "",
    )
