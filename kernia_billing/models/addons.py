"""Add-ons and top-up packs: catalog objects beside plans, each sold by Stripe prices.

- An :class:`AddOn` (``extra-seats``, ``message-pack``) is sold by recurring prices
  (:class:`AddOnPrice`). While a subscription item of such a price is on the customer's
  subscription (mirrored as :class:`AddOnItem`), each :class:`AddOnFeature` grants
  ``amount x quantity``: metered/credit features as an ``addon`` grant per billing
  period, seats and quantities by raising the limit.
- A :class:`TopUpPack` is sold by one one-time price: a paid Checkout Session
  (``mode=payment``) grants ``amount x quantity`` of its feature once (source
  ``topup``), expiring ``expires_after_days`` after the purchase when set.

A price maps to one plan, one add-on or one top-up pack, never two (checked on save
and by ``kernia_billing.E016``).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils.translation import gettext_lazy as _

from .catalog import CatalogPrice, Feature, ResetPeriod, ReviewState
from .customers import BillingCustomer


class AddOnReset(models.TextChoices):
    BILLING = ResetPeriod.BILLING.value, _("Each billing period")
    NONE = ResetPeriod.NONE.value, _("Never (for as long as the item is on)")


class AddOn(models.Model):
    key = models.SlugField(_("key"), max_length=100, unique=True)
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    # Consumable features: "billing" grants afresh each billing period (what is left
    # expires at the period's end); "none" grants once per item, never expiring.
    reset_period = models.CharField(
        _("reset period"), max_length=16, choices=AddOnReset.choices, default=AddOnReset.BILLING
    )
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        verbose_name = _("add-on")
        verbose_name_plural = _("add-ons")

    def __str__(self) -> str:
        return self.name or self.key


class AddOnFeature(models.Model):
    addon = models.ForeignKey(
        AddOn, on_delete=models.CASCADE, related_name="addon_features", verbose_name=_("add-on")
    )
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="addon_features", verbose_name=_("feature")
    )
    amount = models.BigIntegerField(
        _("amount per unit"), validators=[MinValueValidator(1)], help_text=_("Per unit bought.")
    )

    class Meta:
        ordering = ["addon", "feature__key"]
        verbose_name = _("add-on feature")
        verbose_name_plural = _("add-on features")
        constraints = [
            models.UniqueConstraint(fields=["addon", "feature"], name="kernia_addon_feature_once"),
            models.CheckConstraint(condition=models.Q(amount__gte=1), name="kernia_addon_amount"),
        ]

    def __str__(self) -> str:
        return f"{self.addon_id}: {self.amount} {self.feature_id}"

    def clean(self) -> None:
        if self.feature_id and self.feature.kind == "boolean":
            raise ValidationError({"feature": _("A boolean feature has no amount to add.")})


def _mapped_elsewhere(price: CatalogPrice, mine: str) -> str | None:
    """The other catalog object ``price`` is mapped to, if any (``mine`` excluded)."""
    for attr, label in (
        ("plan_mapping", "a plan"),
        ("addon_mapping", "an add-on"),
        ("topup_mapping", "a top-up pack"),
    ):
        # A missing reverse one-to-one raises an AttributeError subclass: hasattr is False.
        if attr != mine and hasattr(price, attr):
            return label
    return None


class AddOnPrice(models.Model):
    """Maps one approved recurring Stripe price to one add-on."""

    addon = models.ForeignKey(
        AddOn, on_delete=models.CASCADE, related_name="addon_prices", verbose_name=_("add-on")
    )
    price = models.OneToOneField(
        CatalogPrice,
        on_delete=models.PROTECT,
        related_name="addon_mapping",
        verbose_name=_("Stripe price"),
        error_messages={"unique": _("This price is already mapped to another add-on.")},
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["addon", "price__unit_amount"]
        verbose_name = _("add-on price")
        verbose_name_plural = _("add-on prices")

    def __str__(self) -> str:
        return f"{self.addon_id} <- {self.price_id}"

    def clean(self) -> None:
        if not self.price_id:
            return
        if self.price.review_state != ReviewState.APPROVED:
            raise ValidationError({"price": _("Only approved prices can be mapped; review it.")})
        if self.price.price_type != "recurring":
            raise ValidationError({"price": _("An add-on is sold by a recurring price.")})
        other = _mapped_elsewhere(self.price, "addon_mapping")
        if other:
            raise ValidationError({"price": _("This price is already mapped to %s.") % other})


class TopUpPack(models.Model):
    """A one-time Stripe price that buys ``amount`` of ``feature``."""

    key = models.SlugField(_("key"), max_length=100, unique=True)
    name = models.CharField(_("name"), max_length=200)
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="topup_packs", verbose_name=_("feature")
    )
    amount = models.BigIntegerField(_("amount"), validators=[MinValueValidator(1)])
    expires_after_days = models.PositiveIntegerField(
        _("expires after (days)"), null=True, blank=True, help_text=_("Empty: never expires.")
    )
    price = models.OneToOneField(
        CatalogPrice,
        on_delete=models.PROTECT,
        related_name="topup_mapping",
        verbose_name=_("Stripe price"),
        null=True,
        blank=True,
        error_messages={"unique": _("This price is already mapped to another top-up pack.")},
    )
    active = models.BooleanField(_("active"), default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        verbose_name = _("top-up pack")
        verbose_name_plural = _("top-up packs")
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gte=1), name="kernia_topup_amount"),
        ]

    def __str__(self) -> str:
        return self.name or self.key

    def clean(self) -> None:
        errors: dict[str, object] = {}
        if self.feature_id and self.feature.kind not in ("metered", "credits"):
            errors["feature"] = _("Top-ups buy a metered feature or a credit pool.")
        price = self.price if self.price_id else None
        if price is not None:
            if price.review_state != ReviewState.APPROVED:
                errors["price"] = _("Only approved prices can be mapped; review it first.")
            elif price.price_type != "one_time":
                errors["price"] = _("A top-up pack is sold by a one-time price.")
            else:
                other = _mapped_elsewhere(price, "topup_mapping")
                if other:
                    errors["price"] = _("This price is already mapped to %s.") % other
        if errors:
            raise ValidationError(errors)


class AddOnItem(models.Model):
    """A subscription item of an add-on price, as last seen on the customer's subscription.

    Written only by the subscription sync (under the customer's lock); ``active`` is
    False once the item left the subscription or the subscription stopped entitling.
    """

    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="addon_items"
    )
    addon = models.ForeignKey(AddOn, on_delete=models.PROTECT, related_name="items")
    stripe_subscription_item_id = models.CharField(max_length=255, unique=True)
    stripe_price_id = models.CharField(max_length=255)
    quantity = models.PositiveIntegerField(default=1)
    current_period_start = models.DateTimeField(null=True, blank=True)
    current_period_end = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["customer", "addon", "pk"]
        verbose_name = _("add-on subscription item")
        verbose_name_plural = _("add-on subscription items")

    def __str__(self) -> str:
        return f"{self.addon_id} x{self.quantity} ({self.stripe_subscription_item_id})"
