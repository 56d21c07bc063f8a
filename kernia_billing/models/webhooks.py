"""Webhook deliveries: dj-stripe's ``WebhookEventTrigger`` rows, as the billing admin shows them.

A proxy (no table of its own) so the deliveries and their health sit in the billing
section of the admin, next to the customers they change.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _
from djstripe.models import WebhookEventTrigger


class DeliveryOutcome(models.TextChoices):
    PROCESSED = "processed", _("Processed")
    FAILED = "failed", _("Failed (Stripe retries)")
    REFUSED = "refused", _("Refused: invalid signature")


class WebhookDelivery(WebhookEventTrigger):
    class Meta:
        proxy = True
        verbose_name = _("webhook delivery")
        verbose_name_plural = _("webhook deliveries and health")

    @property
    def outcome(self) -> str:
        """One of :class:`DeliveryOutcome`, the way the health counts classify it."""
        if self.processed:
            return DeliveryOutcome.PROCESSED
        if self.valid or self.exception:
            return DeliveryOutcome.FAILED
        return DeliveryOutcome.REFUSED
