"""This period's overage, and an estimate of its charge from the overage price."""

from __future__ import annotations

from django.db.models import F, Q, Sum

from ...models import BillingCustomer, Entitlement, OverageReport, PlanFeature, ReportStatus
from ...money import format_amount
from ...types import OverageEstimate

__all__ = ["overage_this_period"]


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
        .exclude(status__in=[ReportStatus.UNBILLED, ReportStatus.CANCELLED])
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
        price = prices.get(feature_id)
        unit_amount = price.unit_amount if price else None
        amount = int(units) * unit_amount if unit_amount is not None else None
        currency = price.currency if price else ""
        estimates.append(
            OverageEstimate(
                feature=entitlements[feature_id].feature.key,
                units=int(units),
                unit=entitlements[feature_id].feature.unit,
                estimated_amount=amount,
                currency=currency,
                display=(
                    f"{int(units)} {entitlements[feature_id].feature.unit or 'units'} · "
                    f"{format_amount(amount, currency)}"
                    if amount is not None
                    else f"{int(units)} {entitlements[feature_id].feature.unit or 'units'}"
                ),
            )
        )
    return tuple(estimates)
