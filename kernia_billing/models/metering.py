"""Billing meters: imported Stripe meters, and the outbox of overage to report to them.

Stripe bills usage-based prices through Billing Meters: a meter has an ``event_name``; a
recurring price with ``recurring.usage_type=metered`` names its ``recurring.meter``;
meter events carry the Stripe customer, a value, a timestamp and an ``identifier``
that Stripe de-duplicates. ``Meter`` holds what we imported (with a review state, like
products and prices); ``OverageReport`` is the outbox: one row per accepted track
that went beyond the customer's balance, written in the track's transaction, sent
exactly once by the sender (``services/metering/sender.py``).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature, ReviewedStripeObject
from .customers import BillingCustomer
from .usage import UsageEvent


class Meter(ReviewedStripeObject):
    """An imported Stripe billing meter (``GET /v1/billing/meters``)."""

    display_name = models.CharField(_("display name"), max_length=250, blank=True)
    event_name = models.CharField(_("event name"), max_length=100, db_index=True)
    status = models.CharField(_("status"), max_length=16, default="active")
    aggregation = models.CharField(_("aggregation"), max_length=16, default="sum")
    customer_payload_key = models.CharField(max_length=100, default="stripe_customer_id")
    value_payload_key = models.CharField(max_length=100, default="value")

    class Meta:
        ordering = ["event_name", "stripe_id"]
        verbose_name = _("imported Stripe meter")
        verbose_name_plural = _("imported Stripe meters")

    def __str__(self) -> str:
        return self.display_name or self.event_name

    @property
    def is_active(self) -> bool:
        return self.status == "active" and not self.deleted_in_stripe


class ReportStatus(models.TextChoices):
    PENDING = "pending", _("Waiting to be sent")
    SENT = "sent", _("Sent to Stripe")
    PARKED = "parked", _("Parked: Stripe refused it")
    UNBILLED = "unbilled", _("Not billed: no overage price")
    CANCELLED = "cancelled", _("Cancelled by a correction")


class ReportKind(models.TextChoices):
    TRACK = "track", _("Overage of a track")
    FIX = "fix", _("Missing units sent by reconciliation")
    CORRECTION = "correction", _("Re-sent remainder after a correction")


class OverageReport(models.Model):
    """One meter event to send: ``value`` overage units of a feature at ``occurred_at``.

    ``identifier`` is fixed when the row is written and sent with every attempt, so
    Stripe (which de-duplicates meter events by identifier) bills a resend once.
    """

    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="overage_reports"
    )
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="+")
    usage_event = models.OneToOneField(
        UsageEvent,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="overage_report",
    )
    kind = models.CharField(max_length=16, choices=ReportKind.choices, default=ReportKind.TRACK)
    value = models.BigIntegerField(_("overage units"))
    occurred_at = models.DateTimeField(_("usage time"))
    identifier = models.CharField(_("meter event identifier"), max_length=100, unique=True)
    status = models.CharField(
        max_length=16, choices=ReportStatus.choices, default=ReportStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # What the row was sent as (resolved when sent: the customer's plan's overage price).
    event_name = models.CharField(max_length=100, blank=True)
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    # Units of a sent row given back by corrections as a credit on the customer's
    # balance (Stripe still counts them; the customer does not pay for them).
    credited = models.BigIntegerField(_("units credited"), default=0, db_default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        verbose_name = _("overage report")
        verbose_name_plural = _("overage reports")
        constraints = [
            models.CheckConstraint(condition=Q(value__gt=0), name="kernia_overage_value_gt_0"),
        ]
        indexes = [
            models.Index(
                fields=["status", "id"],
                condition=Q(status="pending"),
                name="kernia_overage_pending",
            ),
            models.Index(fields=["customer", "feature", "occurred_at"], name="kernia_overage_cft"),
        ]

    def __str__(self) -> str:
        return f"{self.identifier} ({self.value}, {self.status})"
