"""Grants: the sources of a customer's balance beyond the plan's own grant.

A customer's spendable balance for a feature is the plan's grant (kept "virtual" on the
:class:`~kernia_billing.models.Entitlement` row: ``included`` minus what the period used
of it) plus what remains of its live :class:`Grant` rows. Every grant obeys
``amount - consumed - expired - revoked = remaining >= 0``; what was drawn from which
grant is written on each usage event (``UsageEvent.draws``).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature
from .customers import BillingCustomer


class GrantSource(models.TextChoices):
    PLAN = "plan", _("Plan")
    ADDON = "addon", _("Add-on")
    TOPUP = "topup", _("Top-up")
    ADJUSTMENT = "adjustment", _("Staff adjustment")
    ROLLOVER = "rollover", _("Rollover")
    PROMOTION = "promotion", _("Promotion")


class Grant(models.Model):
    """An amount of a feature given to a customer, drawn from by track.

    ``consumed``, ``expired`` and ``revoked`` only grow, and only under the row lock of
    the grant's entitlement (see :mod:`kernia_billing.services.locking`).
    """

    customer = models.ForeignKey(
        BillingCustomer,
        on_delete=models.CASCADE,
        related_name="grants",
        verbose_name=_("customer"),
    )
    feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        related_name="kernia_grants",
        verbose_name=_("feature"),
    )
    source = models.CharField(_("source"), max_length=16, choices=GrantSource.choices)
    amount = models.BigIntegerField(_("amount"))
    consumed = models.BigIntegerField(_("consumed"), default=0)
    # The unconsumed remainder at the grant's expiry, recorded once (lazily).
    expired = models.BigIntegerField(_("expired"), default=0)
    # Taken away by staff (revoke, clawback) or a refund.
    revoked = models.BigIntegerField(_("revoked"), default=0)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    # Plan and add-on grants reset with the period; top-ups and adjustments never do.
    resets = models.BooleanField(_("resets with the period"), default=False)
    reason = models.CharField(_("reason"), max_length=500, blank=True)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("granted by"),
    )
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # Where it came from in Stripe, where it has an origin there.
    stripe_price_id = models.CharField(max_length=255, blank=True)
    stripe_subscription_item_id = models.CharField(max_length=255, blank=True)
    stripe_checkout_session_id = models.CharField(max_length=255, blank=True)
    stripe_invoice_id = models.CharField(max_length=255, blank=True)
    # Free-form detail: a clawback records here what it took from which grant.
    details = models.JSONField(default=dict, blank=True)
    revoked_at = models.DateTimeField(_("revoked at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"))

    class Meta:
        ordering = ["customer", "feature", "id"]
        verbose_name = _("grant")
        verbose_name_plural = _("grants")
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="kernia_billing_grant_idempotency_key",
            ),
            models.CheckConstraint(
                condition=Q(amount__gte=0)
                & Q(consumed__gte=0)
                & Q(expired__gte=0)
                & Q(revoked__gte=0),
                name="kernia_billing_grant_parts_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(amount__gte=F("consumed") + F("expired") + F("revoked")),
                name="kernia_billing_grant_remaining_gte_0",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "feature"], name="kernia_grant_cust_feat"),
        ]

    def __str__(self) -> str:
        return f"{self.get_source_display()} {self.amount} {self.feature_id}"

    @property
    def remaining(self) -> int:
        return self.amount - self.consumed - self.expired - self.revoked
