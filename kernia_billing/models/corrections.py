"""Usage corrections: staff changes to a period's recorded usage, and what they did in Stripe.

A correction is a ledger row (``UsageEvent`` with the correction's amount, so the audit's
``usage = sum of events`` holds) plus this record of who, why, and how billed overage
was undone: units cancelled before Stripe had them or through meter event
adjustments (inside Stripe's 24-hour window), units credited to the customer's Stripe
balance (outside it), and remainders re-sent (see
:mod:`kernia_billing.services.metering.corrections`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from .catalog import Feature
from .customers import BillingCustomer
from .usage import UsageEvent


class UsageCorrection(models.Model):
    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="usage_corrections"
    )
    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="+")
    usage_event = models.OneToOneField(
        UsageEvent, on_delete=models.PROTECT, related_name="correction"
    )
    amount = models.BigIntegerField(_("amount"))
    reason = models.CharField(_("reason"), max_length=500)
    adjusted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("adjusted by"),
    )
    # Billed overage given back: not sent yet (dropped or reduced in the outbox),
    # cancelled in Stripe, or credited to the customer's balance.
    unsent_units = models.BigIntegerField(_("units dropped before sending"), default=0)
    cancelled_units = models.BigIntegerField(_("units cancelled in Stripe"), default=0)
    resent_units = models.BigIntegerField(_("units re-sent after a cancel"), default=0)
    credited_units = models.BigIntegerField(_("units credited"), default=0)
    credited_amount = models.BigIntegerField(_("amount credited"), default=0)
    currency = models.CharField(max_length=3, blank=True)
    stripe_balance_transaction_id = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(_("time"))

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("usage correction")
        verbose_name_plural = _("usage corrections")

    def __str__(self) -> str:
        return f"{self.feature_id} {self.amount:+d}: {self.reason}"
