"""Billing customers: who is billed (a user or an organization) and their Stripe state."""

from __future__ import annotations

from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.utils.translation import gettext_lazy as _

from .catalog import Plan


class BillingCustomer(models.Model):
    """Connects one owner (a user or an organization) to a Stripe customer and subscription.

    The owner is generic so a host project can bill users, organizations, or both,
    without this app's migrations depending on the host's models. Subscription
    fields mirror what the last applied Stripe state said; webhooks are the source
    of truth and ``stripe_state_at`` keeps an older event from rolling state back.
    """

    owner_type = models.ForeignKey(
        ContentType, on_delete=models.CASCADE, related_name="+", verbose_name=_("owner type")
    )
    owner_id = models.CharField(_("owner id"), max_length=64)
    owner = GenericForeignKey("owner_type", "owner_id")

    stripe_customer_id = models.CharField(
        _("Stripe customer"), max_length=255, null=True, blank=True, unique=True
    )
    stripe_subscription_id = models.CharField(
        _("Stripe subscription"), max_length=255, blank=True, db_index=True
    )
    subscription_status = models.CharField(_("subscription status"), max_length=32, blank=True)
    plan = models.ForeignKey(
        Plan,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="customers",
        verbose_name=_("active plan"),
    )
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    billing_interval = models.CharField(max_length=8, blank=True)
    billing_interval_count = models.PositiveIntegerField(default=1)
    cancel_at_period_end = models.BooleanField(default=False)
    trial_end = models.DateTimeField(null=True, blank=True)
    seat_quantity = models.PositiveIntegerField(null=True, blank=True)
    # ``created`` of the newest Stripe event (or fetch) applied to this customer.
    stripe_state_at = models.DateTimeField(null=True, blank=True)
    livemode = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("billing customer")
        verbose_name_plural = _("billing customers")
        constraints = [
            models.UniqueConstraint(
                fields=["owner_type", "owner_id"], name="kernia_billing_customer_one_per_owner"
            )
        ]

    def __str__(self) -> str:
        return self.owner_label

    @property
    def owner_label(self) -> str:
        """``Ada Lovelace <ada@example.com>`` for a user, ``Acme (organization)`` otherwise."""
        kind = self.owner_type.model
        owner = self.owner
        if owner is None:
            return f"{kind} {self.owner_id} ({_('deleted')})"
        email = getattr(owner, "email", "")
        if email:
            get_full_name = getattr(owner, "get_full_name", None)
            name = (get_full_name() if callable(get_full_name) else "") or str(owner)
            return f"{name} <{email}>" if name != email else email
        return f"{owner} ({kind})"
