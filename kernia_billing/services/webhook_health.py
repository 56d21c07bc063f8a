"""Webhook health, read from dj-stripe's ``WebhookEventTrigger`` log (reads only).

Outcomes of a delivery, as dj-stripe records them:

- ``processed``: signature valid and every receiver succeeded (duplicates included).
- ``failed``: a receiver (or the validation call) raised; dj-stripe answered 500 and
  stored the exception; Stripe retries.
- ``invalid_signature``: refused with 400; nothing processed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.utils import timezone

WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class WebhookFailure:
    at: datetime
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class WebhookHealth:
    last_received_at: datetime | None
    window_start: datetime
    processed: int
    failed: int
    invalid_signature: int
    by_type: dict[str, int]
    last_failure: WebhookFailure | None


def _event_type(body: str) -> str:
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return "unknown"
    value = data.get("type") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else "unknown"


def webhook_health(*, now: datetime | None = None) -> WebhookHealth:
    """Counts by outcome and by event type over the last 24 hours, and the last failure."""
    from djstripe.models import WebhookEventTrigger

    now = now or timezone.now()
    since = now - WINDOW
    recent = WebhookEventTrigger.objects.filter(created__gte=since)
    failed_q = ~Q(exception="") | Q(valid=True, processed=False)
    invalid_q = Q(valid=False, exception="")
    counts = recent.aggregate(
        n_processed=Count("pk", filter=Q(processed=True)),
        n_failed=Count("pk", filter=failed_q & Q(processed=False)),
        n_invalid=Count("pk", filter=invalid_q & Q(processed=False)),
    )
    by_type: Counter[str] = Counter()
    # Processed deliveries have their Event row; only the rare others need the body parsed.
    for event_type, count in (
        recent.filter(processed=True, event__isnull=False)
        .values_list("event__type")
        .annotate(n=Count("pk"))
    ):
        by_type[event_type] += count
    for body in recent.exclude(processed=True, event__isnull=False).values_list("body", flat=True):
        by_type[_event_type(body)] += 1

    last = WebhookEventTrigger.objects.order_by("-created").values_list("created", flat=True)
    failure = (
        WebhookEventTrigger.objects.filter(~Q(exception=""))
        .order_by("-updated")
        .values_list("updated", "body", "exception")
        .first()
    )
    return WebhookHealth(
        last_received_at=last.first(),
        window_start=since,
        processed=counts["n_processed"],
        failed=counts["n_failed"],
        invalid_signature=counts["n_invalid"],
        by_type=dict(sorted(by_type.items())),
        last_failure=WebhookFailure(at=failure[0], type=_event_type(failure[1]), message=failure[2])
        if failure
        else None,
    )
