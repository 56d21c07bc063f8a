"""Reads for the API, the admin and the demo. Nothing here writes."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate

from .models import CatalogPrice, UsageEvent

# Stripe's zero-decimal currencies: amounts are in the currency's whole unit.
ZERO_DECIMAL_CURRENCIES = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "cad": "CA$", "aud": "A$"}


def format_amount(unit_amount: int | None, currency: str) -> str:
    """``1200, "usd"`` -> ``$12.00``; unknown currencies as ``12.00 CHF``."""
    if unit_amount is None:
        return "custom"
    currency = (currency or "").lower()
    if currency in ZERO_DECIMAL_CURRENCIES:
        number = f"{unit_amount:,}"
    else:
        number = f"{Decimal(unit_amount) / 100:,.2f}"
    symbol = CURRENCY_SYMBOLS.get(currency)
    return f"{symbol}{number}" if symbol else f"{number} {currency.upper()}"


def format_price(
    unit_amount: int | None, currency: str, interval: str, interval_count: int = 1
) -> str:
    """``$12.00 / month``, ``$120.00 / year``, ``$30.00 / 3 months``, ``$5.00`` (one-off)."""
    amount = format_amount(unit_amount, currency)
    if not interval:
        return amount
    if interval_count and interval_count > 1:
        return f"{amount} / {interval_count} {interval}s"
    return f"{amount} / {interval}"


def flagged_mapped_prices() -> QuerySet[CatalogPrice]:
    """Prices mapped to a plan that Stripe has archived or deleted."""
    from django.db.models import Q

    return (
        CatalogPrice.objects.filter(plan_mapping__isnull=False)
        .filter(Q(active=False) | Q(deleted_in_stripe=True))
        .select_related("plan_mapping__plan")
    )


# --- usage history (GET billing/usage) ---------------------------------------------------


def usage_events(
    customer_id: int | None,
    *,
    feature_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[UsageEvent]:
    """A customer's ledger, newest first, filtered by feature and ``[since, until)``."""
    if customer_id is None:
        return UsageEvent.objects.none()
    events = UsageEvent.objects.filter(customer_id=customer_id)
    if feature_id is not None:
        events = events.filter(feature_id=feature_id)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.select_related("feature").order_by("-created_at", "-id")


def daily_usage_totals(events: QuerySet[UsageEvent]) -> list[dict[str, Any]]:
    """``[{date, feature, amount, events}]`` per UTC day and feature, oldest first."""
    rows = (
        events.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "feature__key")
        .annotate(total=Sum("amount"), count=Count("id"))
        .order_by("day", "feature__key")
    )
    return [
        {
            "date": row["day"],
            "feature": row["feature__key"],
            "amount": row["total"],
            "events": row["count"],
        }
        for row in rows
    ]


# --- pricing table (GET billing/plans) ---------------------------------------------------


def pricing_plans() -> QuerySet[Any]:
    """Active plans in display order, with their offerable prices and current features.

    Prices archived or deleted in Stripe stay mapped (existing subscribers keep their
    plan) but are not offered.
    """
    from django.db.models import Prefetch

    from .models import Plan, PlanFeature, PlanPrice

    offered = (
        PlanPrice.objects.filter(price__active=True, price__deleted_in_stripe=False)
        .select_related("price")
        .order_by("price__currency", "price__recurring_interval", "price__unit_amount")
    )
    features = PlanFeature.objects.filter(feature__archived=False).select_related("feature")
    return (
        Plan.objects.filter(active=True)
        .order_by("display_order", "key")
        .prefetch_related(
            Prefetch("plan_prices", queryset=offered, to_attr="offered_prices"),
            Prefetch("plan_features", queryset=features, to_attr="current_features"),
        )
    )
