"""Webhook health for the demo page.

Counts come from kernia_billing's ``webhook_health`` selector (the same numbers as
``GET billing/webhooks/health``); the page adds the latest deliveries, read from
dj-stripe's ``WebhookEventTrigger`` log. Nothing here writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kernia_billing.selectors import WebhookHealth, webhook_health

RECENT = 15


@dataclass(frozen=True)
class Delivery:
    received_at: dt.datetime
    event_type: str
    event_id: str
    outcome: str
    exception: str


@dataclass(frozen=True)
class WebhookPage:
    health: WebhookHealth
    total: int
    by_type: tuple[tuple[str, int], ...]
    recent: tuple[Delivery, ...]

    @property
    def last_event_type(self) -> str:
        return self.recent[0].event_type if self.recent else ""


def _outcome(trigger: Any) -> str:
    if trigger.processed:
        return "processed"
    if not trigger.valid and not trigger.exception:
        return "invalid signature"
    return "failed"


def summary() -> WebhookPage:
    """Counts by outcome and by type over 24 hours, and the most recent deliveries."""
    from djstripe.models import WebhookEventTrigger

    health = webhook_health()
    triggers = WebhookEventTrigger.objects.select_related("event").order_by("-created")[:RECENT]
    recent = tuple(
        Delivery(
            received_at=trigger.created,
            event_type=str(trigger.event.type) if trigger.event else "(unknown)",
            event_id=str(trigger.event_id or ""),
            outcome=_outcome(trigger),
            exception=trigger.exception,
        )
        for trigger in triggers
    )
    by_type = tuple(sorted(health.by_type.items(), key=lambda item: (-item[1], item[0])))
    return WebhookPage(
        health=health,
        total=health.processed + health.failed + health.invalid_signature,
        by_type=by_type,
        recent=recent,
    )
