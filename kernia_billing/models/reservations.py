"""Reservations: balance held for work whose cost is known only afterwards."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature
from .customers import BillingCustomer
from .entitlements import Entitlement
from .usage import UsageEvent


class ReservationStatus(models.TextChoices):
    OPEN = "open", _("Open")
    CONFIRMED = "confirmed", _("Confirmed")
    RELEASED = "released", _("Released")
    EXPIRED = "expired", _("Expired")


class Reservation(models.Model):
    """A hold on an entitlement's balance until it is confirmed, released or expires.

    While ``open``, the held amount is in the entitlement's ``usage`` (and, for what was
    drawn from grants, in ``grant_usage`` and the grants' ``consumed``) as ``draws``
    records, so check and track see the lower balance with no extra query. Only a
    confirm writes a ledger row (:class:`UsageEvent`); the ledger audit counts open
    holds of the entitlement's current period (``period_start``) beside the events.
    ``held`` is 0 where nothing can be refused (overage allowed, unlimited): such a
    reservation holds nothing and its confirm is a plain track.
    """

    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="reservations"
    )
    entitlement = models.ForeignKey(
        Entitlement, on_delete=models.CASCADE, related_name="reservations"
    )
    # The entitlement's feature: the pool for a credit-pool hold.
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="kernia_reservations"
    )
    # Credit pools: the feature reserved and how many of its units (``amount`` is credits).
    used_feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    units = models.BigIntegerField(null=True, blank=True)
    amount = models.BigIntegerField(_("amount reserved"))
    held = models.BigIntegerField(_("amount held"), default=0)
    # What the hold took from where, in consumption order: [{"grant": 17|null, "amount": 2}].
    draws = models.JSONField(default=list, blank=True)
    from_grants = models.BigIntegerField(default=0)
    # The entitlement's period the hold was taken in (a reset since then wiped its plan part).
    period_start = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=ReservationStatus.choices, default=ReservationStatus.OPEN
    )
    expires_at = models.DateTimeField(_("expires at"))
    created_at = models.DateTimeField(_("created at"))
    closed_at = models.DateTimeField(null=True, blank=True)
    actual = models.BigIntegerField(null=True, blank=True)
    event = models.ForeignKey(
        UsageEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.BinaryField(max_length=32, blank=True, default=b"")
    properties = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("reservation")
        verbose_name_plural = _("reservations")
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="kernia_billing_reservation_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(amount__gt=0) & Q(held__gte=0) & Q(from_grants__gte=0),
                name="kernia_billing_reservation_amounts",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="kernia_resv_status_expiry"),
            models.Index(fields=["entitlement", "status"], name="kernia_resv_ent_status"),
        ]

    def __str__(self) -> str:
        return f"{self.feature_id} {self.amount} {self.status}"
