"""This period's overage, and an estimate of its charge from the overage price."""

from __future__ import annotations

from typing import Any

from django.db.models import F, Q, Subquery, Sum
from django.db.models.functions import Coalesce

from ...models import BillingCustomer, Entitlement, OverageReport, PlanFeature, ReportStatus
from ...money import format_amount
from ...types import OverageEstimate

__all__ = ["estimate", "feature_overage", "overage_this_period"]

_NOT_OWED = [ReportStatus.UNBILLED, ReportStatus.CANCELLED]


def estimate(
    feature: str, unit: str, units: int, unit_amount: int | None, currency: str
) -> OverageEstimate:
    """Units and their charge at the overage price (no charge without a unit amount)."""
    amount = units * unit_amount if unit_amount is not None else None
    label = f"{units} {unit or 'units'}"
    return OverageEstimate(
        feature=feature,
        units=units,
        unit=unit,
        estimated_amount=amount,
        currency=currency,
        display=f"{label} · {format_amount(amount, currency)}" if amount is not None else label,
    )


def feature_overage(row: Any) -> OverageEstimate | None:
    """One entitlement's overage this period, for ``check``: one query (the plan feature
    with its overage price and feature, the period's outbox total as a subquery)."""
    reports = OverageReport.objects.filter(
        customer_id=row.customer_id, feature_id=row.feature_id
    ).exclude(status__in=_NOT_OWED)
    if row.period_start is not None:
        reports = reports.filter(occurred_at__gte=row.period_start)
    total = (
        reports.order_by()
        .values("customer_id")
        .annotate(total=Sum(F("value") - F("credited")))
        .values("total")
    )
    found = (
        PlanFeature.objects.filter(plan_id=row.plan_id, feature_id=row.feature_id)
        .select_related("overage_price", "feature")
        .annotate(units=Coalesce(Subquery(total), 0))
        .first()
    )
    if found is None:
        return None
    price = found.overage_price
    return estimate(
        row.feature,
        found.feature.unit,
        int(found.units),
        price.unit_amount if price else None,
        price.currency if price else "",
    )


def overage_this_period(customer: BillingCustomer) -> tuple[OverageEstimate, ...]:
    """Per metered feature with overage this period: units and estimated charge (two
    queries; none of it asks Stripe)."""
    entitlements = {
        e.feature_id: e
        for e in Entitlement.objects.filter(customer=customer).select_related("feature")
    }
    if not entitlements:
        return ()
    since = Q()
    for feature_id, entitlement in entitlements.items():
        window = Q(feature_id=feature_id)
        if entitlement.period_start is not None:
            window &= Q(occurred_at__gte=entitlement.period_start)
        since |= window
    totals = dict(
        OverageReport.objects.filter(since, customer=customer)
        .exclude(status__in=_NOT_OWED)
        .values_list("feature_id")
        # Units a correction credited are billed by Stripe but refunded: not owed.
        .annotate(units=Sum(F("value") - F("credited")))
        .values_list("feature_id", "units")
    )
    totals = {feature_id: units for feature_id, units in totals.items() if units}
    if not totals:
        return ()
    plan_features = PlanFeature.objects.filter(plan=customer.plan, feature_id__in=totals)
    prices = {
        pf.feature_id: pf.overage_price for pf in plan_features.select_related("overage_price")
    }
    estimates = []
    for feature_id, units in sorted(totals.items()):
        feature = entitlements[feature_id].feature
        price = prices.get(feature_id)
        unit_amount = price.unit_amount if price is not None else None
        currency = price.currency if price is not None else ""
        estimates.append(estimate(feature.key, feature.unit, int(units), unit_amount, currency))
    return tuple(estimates)
