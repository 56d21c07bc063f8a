"""Entitlements: per (customer, feature) balances that reset."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature, ResetPeriod
from .customers import BillingCustomer


class Entitlement(models.Model):
    """What a customer may use of a feature now: ``balance = included - usage``.

    ``usage`` is only ever changed by conditional ``UPDATE`` statements in
    :mod:`kernia_billing.services.usage` (track) and
    :mod:`kernia_billing.services.entitlements.resets`; it equals the sum of the
    customer's usage events for the feature since ``period_start``.
    """

    customer = models.ForeignKey(
        BillingCustomer,
        on_delete=models.CASCADE,
        related_name="entitlements",
        verbose_name=_("customer"),
    )
    feature = models.ForeignKey(
        Feature,
        on_delete=models.CASCADE,
        related_name="kernia_entitlements",
        verbose_name=_("feature"),
    )
    # False when the customer's plan no longer grants the feature; the row stays so
    # usage in the current period survives a downgrade and re-upgrade.
    granted = models.BooleanField(default=True)
    included = models.BigIntegerField(default=0)
    unlimited = models.BooleanField(default=False)
    allow_overage = models.BooleanField(default=False)
    usage = models.BigIntegerField(default=0)
    reset_period = models.CharField(
        max_length=16, choices=ResetPeriod.choices, default=ResetPeriod.NONE
    )
    # Resets are anchored here (the subscription period start, else customer creation).
    reset_anchor = models.DateTimeField(null=True, blank=True)
    period_start = models.DateTimeField(null=True, blank=True)
    next_reset_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("entitlement")
        verbose_name_plural = _("entitlements")
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "feature"], name="kernia_billing_entitlement_unique"
            ),
            models.CheckConstraint(
                condition=Q(usage__gte=0),
                name="kernia_billing_entitlement_usage_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer}: {self.feature.key}"

    @property
    def balance(self) -> int:
        return self.included - self.usage
