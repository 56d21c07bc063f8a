"""Import Stripe billing meters with the catalog: review rows like products and prices.

``GET /v1/billing/meters`` is fetched by the catalog sync (``kernia_sync_catalog``, the
REST sync); each meter gets a :class:`~kernia_billing.models.Meter` row, pending review
when new or changed in Stripe since review. A metered price's meter is its
``recurring.meter`` (``CatalogPrice.stripe_meter_id``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from ...exceptions import CatalogError
from ...models import CatalogPrice, Meter, Plan, PlanFeature, ReviewState
from .. import stripe_gateway

__all__ = ["fetch_meters", "meter_fingerprint", "review_meters", "write_meter_rows"]


def fetch_meters(
    *, api_key: str, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Every billing meter of the account, active and inactive."""
    meters = list(stripe_gateway.list_all("billing.meter", api_key=api_key))
    if progress:
        progress(f"Fetched {len(meters)} meters.")
    return meters


def meter_fingerprint(data: dict[str, Any]) -> str:
    """Hash of what decides billing: event name, aggregation, payload keys, status."""
    fields = _columns(data)
    fields.pop("display_name")
    encoded = json.dumps(fields, sort_keys=True).encode()
    return hashlib.sha256(encoded).hexdigest()


def _columns(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "display_name": (data.get("display_name") or "")[:250],
        "event_name": (data.get("event_name") or "")[:100],
        "status": data.get("status") or "active",
        "aggregation": (data.get("default_aggregation") or {}).get("formula") or "sum",
        "customer_payload_key": (data.get("customer_mapping") or {}).get("event_payload_key")
        or "stripe_customer_id",
        "value_payload_key": (data.get("value_settings") or {}).get("event_payload_key") or "value",
        "livemode": bool(data.get("livemode", False)),
    }


def write_meter_rows(meters: list[dict[str, Any]], *, livemode: bool) -> dict[str, int]:
    """Create or update the meter review rows (inside the sync's transaction)."""
    now = timezone.now()
    counts = {"meters_created": 0, "meters_updated": 0, "meters_unchanged": 0}
    rows = {m.stripe_id: m for m in Meter.objects.select_for_update()}
    for data in meters:
        columns = {
            **_columns(data),
            "active": data.get("status") == "active",
            "fingerprint": meter_fingerprint(data),
        }
        row = rows.get(data["id"])
        if row is None:
            Meter.objects.create(
                stripe_id=data["id"], review_state=ReviewState.PENDING, synced_at=now, **columns
            )
            counts["meters_created"] += 1
            continue
        changed = [name for name, value in columns.items() if getattr(row, name) != value]
        if not changed:
            counts["meters_unchanged"] += 1
            continue
        for name in changed:
            setattr(row, name, columns[name])
        if row.review_state != ReviewState.PENDING and row.fingerprint != row.reviewed_fingerprint:
            row.review_state = ReviewState.PENDING
            changed.append("review_state")
        row.synced_at = now
        row.save(update_fields=[*changed, "synced_at"])
        counts["meters_updated"] += 1
    return counts


def overage_line_items(plan: Plan, price: CatalogPrice) -> list[dict[str, Any]]:
    """Checkout line items that put the plan's overage prices on its subscription (those
    matching ``price``'s currency and interval: a subscription's prices share them)."""
    overage_prices = CatalogPrice.objects.filter(
        overage_of__plan=plan,
        currency=price.currency,
        recurring_interval=price.recurring_interval,
        recurring_interval_count=price.recurring_interval_count,
        active=True,
        deleted_in_stripe=False,
    ).distinct()
    return [{"price": p.stripe_id} for p in overage_prices.order_by("stripe_id")]


# --- review (the admin's approve/ignore actions) -------------------------------------------


def review_meters(meters: Iterable[Meter], state: str, user: Any = None) -> int:
    """Approve or ignore imported meters as they are now (who, when, the fingerprint
    reviewed); a sync puts a meter back to pending when Stripe changes it. A meter that
    bills a plan's overage price cannot be ignored."""
    meters = list(meters)
    if state == ReviewState.IGNORED:
        billing = sorted(
            PlanFeature.objects.filter(
                overage_price__stripe_meter_id__in=[m.stripe_id for m in meters]
            ).values_list("overage_price__stripe_meter_id", flat=True)
        )
        if billing:
            raise CatalogError(
                "Meters that bill a plan's overage price cannot be ignored; unmap the "
                f"overage price first: {', '.join(dict.fromkeys(billing))}.",
                fields={"meters": list(dict.fromkeys(billing))},
            )
    now = timezone.now()
    reviewer = user if getattr(user, "pk", None) else None
    with transaction.atomic():
        for meter in meters:
            Meter.objects.filter(pk=meter.pk).update(
                review_state=state,
                reviewed_by=reviewer,
                reviewed_at=now,
                reviewed_fingerprint=meter.fingerprint,
            )
    return len(meters)
