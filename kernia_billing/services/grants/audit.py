"""The ledger audit, extended to grants (called by ``audit_ledger``; reports, never fixes).

For every grant: ``consumed`` is the sum of what the ledger's draws took from it, and
no draw took from it at or after its ``expires_at``; ``amount - consumed - expired -
revoked = remaining >= 0`` holds by the table's constraints. For every entitlement:
``grant_usage`` is the sum of ``from_grants`` of its events in the period,
``grant_remaining`` the sum of its grants' remaining and ``grant_next_expiry`` the
soonest expiry among those with something left, so the balance is the plan's grant
left plus the sum of remaining. Every event's ``from_grants`` is what its draws took
from grants. Open reservations (:mod:`~kernia_billing.services.reservations`) count as
events: what their holds drew is in the grants' ``consumed`` (any period) and, for holds
of the entitlement's current period, in ``grant_usage``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from itertools import chain

from ...models import (
    ArchivedUsageEvent,
    Entitlement,
    Grant,
    Reservation,
    ReservationStatus,
    UsageEvent,
)
from ...models.usage import DREW_FROM_GRANTS
from ...types import Drift


def audit_grants(customer_ids: list[int] | None = None) -> list[Drift]:
    drifts: list[Drift] = []
    # On their partial indexes: the rows that drew, not the whole history.
    events = UsageEvent.objects.filter(DREW_FROM_GRANTS)
    # Rows moved out by retention (kernia_archive_usage) still count for their grants.
    archived = ArchivedUsageEvent.objects.filter(DREW_FROM_GRANTS)
    grants = Grant.objects.select_related("feature")
    entitlements = Entitlement.objects.select_related("feature")
    if customer_ids is not None:
        events = events.filter(customer_id__in=customer_ids)
        archived = archived.filter(customer_id__in=customer_ids)
        grants = grants.filter(customer_id__in=customer_ids)
        entitlements = entitlements.filter(customer_id__in=customer_ids)
    drawn: dict[int, int] = defaultdict(int)
    drawn_at: dict[int, list[datetime]] = defaultdict(list)
    in_period: dict[tuple[int, int], list[tuple[datetime, int]]] = defaultdict(list)
    held_in_period = _open_holds(customer_ids, drawn)
    # A confirm's row draws what its hold drew when it was taken: dated at the hold.
    confirmed = Reservation.objects.filter(
        status=ReservationStatus.CONFIRMED, from_grants__gt=0, event_id__isnull=False
    )
    if customer_ids is not None:
        confirmed = confirmed.filter(customer_id__in=customer_ids)
    held_at = dict(confirmed.values_list("event_id", "created_at"))
    drawing: Iterable[UsageEvent | ArchivedUsageEvent] = chain(
        archived.order_by("pk").iterator(), events.order_by("pk").iterator()
    )
    for event in drawing:
        total = 0
        for part in event.draws or []:
            if part.get("grant") is not None:
                drawn[part["grant"]] += int(part["amount"])
                drawn_at[part["grant"]].append(held_at.get(event.pk, event.created_at))
                total += int(part["amount"])
        in_period[(event.customer_id, event.feature_id)].append((event.created_at, total))
        if total != event.from_grants:
            drifts.append(
                Drift("event", event.customer_id, f"event {event.pk}", total, event.from_grants)
            )
    remaining: dict[tuple[int, int], int] = defaultdict(int)
    next_expiry: dict[tuple[int, int], datetime] = {}
    for grant in grants.order_by("pk"):
        pair = (grant.customer_id, grant.feature_id)
        subject = f"{grant.feature.key} grant {grant.pk}"
        if drawn[grant.pk] != grant.consumed:
            drifts.append(
                Drift("grant", grant.customer_id, subject, drawn[grant.pk], grant.consumed)
            )
        if grant.expires_at is not None:
            late = [at for at in drawn_at[grant.pk] if at >= grant.expires_at]
            if late:
                drifts.append(
                    Drift("grant", grant.customer_id, f"{subject} drawn after expiry", 0, len(late))
                )
        if grant.remaining < 0:
            drifts.append(Drift("grant", grant.customer_id, subject, 0, grant.remaining))
        remaining[pair] += grant.remaining
        if grant.remaining > 0 and grant.expires_at is not None:
            soonest = next_expiry.get(pair)
            if soonest is None or grant.expires_at < soonest:
                next_expiry[pair] = grant.expires_at
    for entitlement in entitlements.order_by("customer_id", "feature__key"):
        pair = (entitlement.customer_id, entitlement.feature_id)
        start = entitlement.period_start
        used = sum(n for at, n in in_period[pair] if start is None or at >= start)
        used += held_in_period.get((entitlement.pk, start), 0)
        key = entitlement.feature.key
        checks = (
            ("grant usage", used, entitlement.grant_usage),
            ("grant remaining", remaining[pair], entitlement.grant_remaining),
            ("grant next expiry", next_expiry.get(pair), entitlement.grant_next_expiry),
        )
        for name, expected, actual in checks:
            if expected != actual:
                drifts.append(
                    Drift("grants", entitlement.customer_id, f"{key} {name}", expected, actual)
                )
    return drifts


def _open_holds(
    customer_ids: list[int] | None, drawn: dict[int, int]
) -> dict[tuple[int, datetime | None], int]:
    """Add open holds' grant parts to ``drawn``; their ``from_grants`` per (entitlement,
    period the hold was taken in)."""
    holds = Reservation.objects.filter(status=ReservationStatus.OPEN, held__gt=0)
    if customer_ids is not None:
        holds = holds.filter(customer_id__in=customer_ids)
    per_period: dict[tuple[int, datetime | None], int] = defaultdict(int)
    for entitlement_id, period_start, draws, from_grants in holds.values_list(
        "entitlement_id", "period_start", "draws", "from_grants"
    ):
        for part in draws or []:
            if part.get("grant") is not None:
                drawn[part["grant"]] += int(part["amount"])
        per_period[(entitlement_id, period_start)] += from_grants
    return per_period
