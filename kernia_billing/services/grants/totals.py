"""The entitlement's grant columns (``grant_remaining``, ``grant_next_expiry``) and reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection
from django.db.models import F, Min, Q, Sum
from django.utils import timezone

from ...models import Entitlement, Grant
from ..entitlements.rows import EntitlementRow, _select

_NEVER = datetime.max.replace(tzinfo=UTC)
REMAINING = F("amount") - F("consumed") - F("expired") - F("revoked")


def lock_entitlement(entitlement_id: int) -> EntitlementRow:
    """Step 2 of the lock order for one entitlement (inside a transaction)."""
    lock = " FOR UPDATE OF e" if connection.features.has_select_for_update_of else ""
    row = _select(f"e.id = %s{lock}", [entitlement_id])
    assert row is not None, "entitlements are never deleted while in use"
    return row


def refresh_totals(entitlement_id: int, customer_id: int, feature_id: int) -> None:
    """Recompute the entitlement's grant columns from its grants.

    Runs under the entitlement's row lock, after the grants were written.
    """
    grants = Grant.objects.filter(customer_id=customer_id, feature_id=feature_id).annotate(
        left=REMAINING
    )
    totals = grants.aggregate(
        remaining=Sum("left"),
        next_expiry=Min("expires_at", filter=Q(left__gt=0)),
    )
    Entitlement.objects.filter(pk=entitlement_id).update(
        grant_remaining=totals["remaining"] or 0,
        grant_next_expiry=totals["next_expiry"],
        updated_at=timezone.now(),
    )


@dataclass(frozen=True, slots=True)
class GrantPart:
    """One source of a balance, as the breakdown shows it."""

    source: str
    remaining: int
    expires_at: datetime | None
    grant_id: int | None = None


def breakdown(row: EntitlementRow, now: datetime) -> tuple[GrantPart, ...]:
    """The plan's grant, then the live grants with something left, in consumption order."""
    parts = [GrantPart("plan", row.plan_remaining, row.next_reset_at)] if not row.unlimited else []
    if row.grant_remaining:
        live = (
            Grant.objects.filter(customer_id=row.customer_id, feature_id=row.feature_id)
            .annotate(left=REMAINING)
            .filter(left__gt=0)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .values_list("pk", "source", "left", "expires_at")
        )
        ordered = sorted(live, key=lambda g: consumption_key(g[0], g[3]))
        parts += [GrantPart(source, left, expires, pk) for pk, source, left, expires in ordered]
    return tuple(parts)


def consumption_key(grant_id: int, expires_at: datetime | None) -> tuple[bool, datetime, int]:
    """Soonest-expiring first, never-expiring last, older first on ties."""
    return (expires_at is None, expires_at or _NEVER, grant_id)


def customer_grants(customer_id: int | None, *, feature_id: int | None = None) -> list[Grant]:
    """A customer's grants, newest first, expired and revoked ones included (reads only)."""
    if customer_id is None:
        return []
    grants = Grant.objects.filter(customer_id=customer_id).select_related("feature")
    if feature_id is not None:
        grants = grants.filter(feature_id=feature_id)
    return list(grants.order_by("-created_at", "-pk")[:500])
