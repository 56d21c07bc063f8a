"""Entitlements: per (customer, feature) balances that reset."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature, ResetPeriod
from .customers import BillingCustomer


class Entitlement(models.Model):
    """What a customer may use of a feature now.

    ``balance = included - (usage - grant_usage) + grant_remaining``: what is left of the
    plan's grant (``usage - grant_usage`` is the part of the period's usage the plan
    covered) plus what remains of the customer's other grants (see
    :class:`~kernia_billing.models.Grant`). ``grant_usage``, ``grant_remaining`` and
    ``grant_next_expiry`` are maintained in the transactions that write grants, under
    this row's lock; a grant whose ``expires_at`` has passed is in ``grant_remaining``
    only until its expiry is recorded, which every reader does first when
    ``grant_next_expiry`` has passed.

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
    # The part of this period's usage drawn from grants (not from the plan's grant).
    grant_usage = models.BigIntegerField(default=0, db_default=0)
    # Sum of what remains of the customer's grants of this feature (expiry not yet
    # recorded included), and the soonest expiry among those with something left.
    grant_remaining = models.BigIntegerField(default=0, db_default=0)
    grant_next_expiry = models.DateTimeField(null=True, blank=True)
    # Rollovers (copied from the plan feature): the cap of rolled-over balance (0 = off)
    # and how many periods a rollover lives.
    rollover_max = models.BigIntegerField(default=0, db_default=0)
    rollover_expires_after = models.PositiveIntegerField(default=1, db_default=1)
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
            models.CheckConstraint(
                condition=Q(grant_usage__gte=0) & Q(grant_remaining__gte=0),
                name="kernia_billing_entitlement_grants_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer}: {self.feature.key}"

    @property
    def balance(self) -> int:
        return self.included - self.usage + self.grant_usage + self.grant_remaining
