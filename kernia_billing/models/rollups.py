"""Usage rollups: per customer x feature x UTC day totals of the ledger, kept exact.

Every ledger writer adds its event to the day's row in the SAME transaction as the
ledger row (:func:`kernia_billing.services.usage.rollups.record_rollup`), so a rollup
always equals the ledger it sums: history charts and ``daily=true`` read a few hundred
rollup rows instead of scanning millions of events, and archived events
(``kernia_archive_usage``) stay visible in history.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

from .catalog import Feature
from .customers import BillingCustomer
from .usage import DREW_FROM_GRANTS


class UsageRollup(models.Model):
    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="usage_rollups", db_index=False
    )
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="kernia_usage_rollups"
    )
    day = models.DateField(_("day (UTC)"))
    amount = models.BigIntegerField(_("amount"), default=0)
    events = models.BigIntegerField(_("events"), default=0)

    class Meta:
        ordering = ["customer", "day", "feature"]
        verbose_name = _("daily usage total")
        verbose_name_plural = _("daily usage totals")
        constraints = [
            # The upsert's conflict target; it also serves customer + feature + day reads
            # and, features being few, customer + day reads.
            models.UniqueConstraint(
                fields=["customer", "feature", "day"], name="kernia_billing_rollup_day"
            )
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.feature_id} {self.amount:+d} ({self.events})"


class ArchivedUsageEvent(models.Model):
    """A ledger row moved out of the hot table by ``kernia_archive_usage``.

    Same columns as :class:`~kernia_billing.models.UsageEvent` (same ids), no indexes
    beyond the primary key, the customer and the rows that drew from grants: it is read
    only by the grants audit (draws of grants that outlive the hot table) and by whoever
    wants old raw events.
    """

    id = models.BigIntegerField(primary_key=True)
    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="archived_usage_events"
    )
    feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        related_name="kernia_archived_usage_events",
        db_index=False,
    )
    amount = models.BigIntegerField()
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.BinaryField(max_length=32, blank=True, default=b"")
    properties = models.JSONField(null=True, blank=True, default=None)
    created_at = models.DateTimeField()
    balance_after = models.BigIntegerField()
    usage_after = models.BigIntegerField()
    from_grants = models.BigIntegerField(default=0)
    draws = models.JSONField(null=True, blank=True)
    used_feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="kernia_archived_pool_usage_events",
        db_index=False,
    )
    units = models.BigIntegerField(null=True, blank=True)

    class Meta:
        verbose_name = _("archived usage event")
        verbose_name_plural = _("archived usage events")
        indexes = [
            models.Index(fields=["id"], condition=DREW_FROM_GRANTS, name="kernia_archived_drew"),
        ]

    def __str__(self) -> str:
        return f"{self.feature_id} {self.amount:+d} @ {self.created_at:%Y-%m-%d %H:%M:%S}"
