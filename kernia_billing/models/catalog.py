"""The catalog: features, plans, and the Stripe products/prices they are built from.

Stripe owns products and prices; dj-stripe mirrors them. ``CatalogProduct`` and
``CatalogPrice`` hold what only we know about them (review state, the fingerprint
of what was reviewed, whether Stripe archived or deleted them) plus the few
columns the admin lists, so no screen has to dig into ``stripe_data`` JSON.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from ..money import format_price


class FeatureKind(models.TextChoices):
    BOOLEAN = "boolean", _("Boolean (on/off)")
    METERED = "metered", _("Metered (consumable, resets)")
    SEATS = "seats", _("Seats (goes up and down)")
    QUANTITY = "quantity", _("Quantity (static limit)")
    CREDITS = "credits", _("Credit pool (consumable, other features draw from it)")


#: Kinds whose usage is consumed (positive amounts only) and that take grants.
CONSUMABLE_KINDS = frozenset({FeatureKind.METERED, FeatureKind.CREDITS})


class ResetPeriod(models.TextChoices):
    NONE = "none", _("Never")
    DAY = "day", _("Daily")
    WEEK = "week", _("Weekly")
    MONTH = "month", _("Monthly")
    YEAR = "year", _("Yearly")
    BILLING = "billing", _("Each billing period")


class ReviewState(models.TextChoices):
    PENDING = "pending", _("Pending review")
    APPROVED = "approved", _("Approved")
    IGNORED = "ignored", _("Ignored")


class Feature(models.Model):
    """Something the product gates: a switch, a consumable, seats or a static limit."""

    key = models.SlugField(_("key"), max_length=100, unique=True)
    name = models.CharField(_("name"), max_length=200)
    kind = models.CharField(_("kind"), max_length=16, choices=FeatureKind.choices)
    unit = models.CharField(
        _("unit label"), max_length=50, blank=True, help_text=_("e.g. messages, seats, GB")
    )
    description = models.TextField(_("description"), blank=True)
    archived = models.BooleanField(_("archived"), default=False)
    # Credit pools: tracking this feature draws ``amount x credit_cost`` from the pool.
    credit_pool = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="credit_consumers",
        limit_choices_to={"kind": "credits"},
        verbose_name=_("credit pool"),
    )
    credit_cost = models.PositiveIntegerField(
        _("credit cost"),
        default=1,
        db_default=1,
        validators=[MinValueValidator(1)],
        help_text=_("Credits one unit of this feature draws from its pool."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        # dj-stripe has its own Feature (Stripe Entitlements); say which one this is.
        verbose_name = _("billing feature")
        verbose_name_plural = _("billing features")
        constraints = [
            models.CheckConstraint(
                condition=Q(credit_cost__gte=1), name="kernia_billing_feature_credit_cost_gte_1"
            ),
        ]

    def __str__(self) -> str:
        return self.key

    #: Fields that customers' entitlements and usage depend on: frozen once in use.
    FROZEN_WHEN_IN_USE = ("key", "kind")

    def in_use(self) -> bool:
        """Whether any customer has an entitlement to, or usage of, this feature."""
        if self.pk is None:
            return False
        return self.kernia_entitlements.exists() or self.kernia_usage_events.exists()  # type: ignore[attr-defined]

    def clean(self) -> None:
        self._clean_credit_pool()
        # Renaming a used feature breaks every check/track call that names it, and a
        # new kind reinterprets the usage already recorded: add a new feature instead.
        if self.pk is None or not self.in_use():
            return
        stored = Feature.objects.filter(pk=self.pk).values(*self.FROZEN_WHEN_IN_USE).first()
        if stored is None:
            return
        errors = {
            name: _(
                "Customers use this feature, so its %(field)s cannot change. Add a new "
                "feature, map it to the plans, then archive this one."
            )
            % {"field": name}
            for name in self.FROZEN_WHEN_IN_USE
            if getattr(self, name) != stored[name]
        }
        if errors:
            raise ValidationError(errors)

    def _clean_credit_pool(self) -> None:
        if self.credit_pool_id is None:
            return
        pool = self.credit_pool
        if pool is None or pool.kind != FeatureKind.CREDITS or pool.pk == self.pk:
            raise ValidationError({"credit_pool": _("A credit pool is a feature of kind credits.")})
        if self.kind != FeatureKind.METERED:
            raise ValidationError({"credit_pool": _("Only metered features draw from a pool.")})


class Plan(models.Model):
    """A set of plan features that one or more Stripe prices grant."""

    key = models.SlugField(_("key"), max_length=100, unique=True)
    name = models.CharField(_("name"), max_length=200)
    description = models.TextField(_("description"), blank=True)
    is_default = models.BooleanField(
        _("default plan"),
        default=False,
        help_text=_("The plan of customers without an entitling subscription (e.g. Free)."),
    )
    active = models.BooleanField(_("active"), default=True)
    display_order = models.PositiveIntegerField(_("display order"), default=0)
    trial_days = models.PositiveIntegerField(
        _("trial days"),
        default=0,
        db_default=0,
        help_text=_("Days of free trial a new subscription gets at checkout (0: none)."),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["display_order", "key"]
        verbose_name = _("plan")
        verbose_name_plural = _("plans")
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="kernia_billing_plan_one_default",
                violation_error_message=_("Another plan is already the default plan."),
            )
        ]
        permissions = [("manage_billing", "Can manage billing for any customer")]

    def __str__(self) -> str:
        return self.name or self.key


class PlanFeature(models.Model):
    """The entitlement definition: what one plan grants of one feature."""

    plan = models.ForeignKey(
        Plan, on_delete=models.CASCADE, related_name="plan_features", verbose_name=_("plan")
    )
    feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        related_name="kernia_plan_features",
        verbose_name=_("feature"),
    )
    included = models.BigIntegerField(_("included"), default=0, validators=[MinValueValidator(0)])
    unlimited = models.BooleanField(_("unlimited"), default=False)
    reset_period = models.CharField(
        _("reset period"), max_length=16, choices=ResetPeriod.choices, default=ResetPeriod.NONE
    )
    allow_overage = models.BooleanField(_("allow overage"), default=False)
    included_from_quantity = models.BooleanField(
        _("included equals subscription quantity"),
        default=False,
        help_text=_("Seats: the limit is the Stripe subscription item's quantity."),
    )
    overage_price = models.ForeignKey(
        "CatalogPrice",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="overage_of",
        verbose_name=_("overage price"),
        help_text=_("An approved metered Stripe price that bills usage beyond the grant."),
    )
    rollover_max = models.BigIntegerField(
        _("rollover cap"),
        default=0,
        db_default=0,
        validators=[MinValueValidator(0)],
        help_text=_("Unused included amount carried into later periods, up to this (0: off)."),
    )
    rollover_expires_after = models.PositiveIntegerField(
        _("rollover lifetime (periods)"),
        default=1,
        db_default=1,
        validators=[MinValueValidator(1)],
        help_text=_("A rollover expires this many periods after the period it came from."),
    )

    class Meta:
        ordering = ["plan", "feature__key"]
        verbose_name = _("plan feature")
        verbose_name_plural = _("plan features")
        constraints = [
            models.UniqueConstraint(
                fields=["plan", "feature"], name="kernia_billing_planfeature_unique"
            ),
            models.CheckConstraint(
                condition=Q(included__gte=0), name="kernia_billing_planfeature_included_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(rollover_max__gte=0) & Q(rollover_expires_after__gte=1),
                name="kernia_billing_planfeature_rollover_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.key}: {self.feature.key}"

    def clean(self) -> None:
        errors: dict[str, Any] = {}
        kind = self.feature.kind if self.feature_id else None
        if self.included is not None and self.included < 0:
            errors["included"] = _("Included must be zero or more.")
        if kind == FeatureKind.BOOLEAN:
            if self.reset_period != ResetPeriod.NONE:
                errors["reset_period"] = _("A boolean feature does not reset.")
            if self.allow_overage:
                errors["allow_overage"] = _("A boolean feature has no overage.")
            if self.included_from_quantity:
                errors["included_from_quantity"] = _("A boolean feature has no quantity.")
        if kind in (FeatureKind.SEATS, FeatureKind.QUANTITY) and (
            self.reset_period != ResetPeriod.NONE
        ):
            errors["reset_period"] = _("Seats and quantities are not consumed; they never reset.")
        if self.included_from_quantity and kind != FeatureKind.SEATS:
            errors["included_from_quantity"] = _("Only seats can follow the subscription quantity.")
        if self.overage_price_id:
            errors.update(self._overage_price_errors(kind))
        if self.rollover_max and (
            kind not in CONSUMABLE_KINDS or self.reset_period == ResetPeriod.NONE or self.unlimited
        ):
            errors["rollover_max"] = _("Only a limited metered feature that resets rolls over.")
        if errors:
            raise ValidationError(errors)

    def _overage_price_errors(self, kind: str | None) -> dict[str, Any]:
        price = self.overage_price
        if price is None:
            return {}
        if kind != FeatureKind.METERED:
            return {"overage_price": _("Only metered features bill overage.")}
        if price.review_state != ReviewState.APPROVED:
            return {"overage_price": _("Only approved prices can bill overage; review it first.")}
        if price.usage_type != "metered" or not price.stripe_meter_id:
            return {"overage_price": _("The overage price must be a metered price with a meter.")}
        return {}

    def as_seed_dict(self) -> dict[str, object]:
        """The JSON shape of the seed: ``{"key", "kind", "included", "resetPeriod", ...}``."""
        return {
            "key": self.feature.key,
            "kind": self.feature.kind,
            "included": self.included,
            "unlimited": self.unlimited,
            "resetPeriod": self.reset_period,
            "allowOverage": self.allow_overage,
            "includedFromQuantity": self.included_from_quantity,
            **({"overagePrice": self.overage_price.reference} if self.overage_price else {}),
            **(
                {
                    "rolloverMax": self.rollover_max,
                    "rolloverExpiresAfter": self.rollover_expires_after,
                }
                if self.rollover_max
                else {}
            ),
        }


class ReviewedStripeObject(models.Model):
    """Review bookkeeping shared by imported products and prices."""

    stripe_id = models.CharField(_("Stripe id"), max_length=255, unique=True)
    livemode = models.BooleanField(default=False)
    active = models.BooleanField(_("active in Stripe"), default=True)
    deleted_in_stripe = models.BooleanField(_("deleted in Stripe"), default=False)
    review_state = models.CharField(
        _("review state"),
        max_length=16,
        choices=ReviewState.choices,
        default=ReviewState.PENDING,
        db_index=True,
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("reviewed by"),
    )
    reviewed_at = models.DateTimeField(_("reviewed at"), null=True, blank=True)
    # Fingerprint of the Stripe fields that matter, as last synced and as last reviewed:
    # when they differ, Stripe changed the object after review.
    fingerprint = models.CharField(max_length=64, blank=True)
    reviewed_fingerprint = models.CharField(max_length=64, blank=True)
    synced_at = models.DateTimeField(_("last synced"), null=True, blank=True)

    class Meta:
        abstract = True


class CatalogProduct(ReviewedStripeObject):
    name = models.CharField(_("name"), max_length=500, blank=True)
    description = models.TextField(_("description"), blank=True)

    class Meta:
        ordering = ["name", "stripe_id"]
        verbose_name = _("imported Stripe product")
        verbose_name_plural = _("imported Stripe products")

    def __str__(self) -> str:
        return self.name or self.stripe_id


class CatalogPrice(ReviewedStripeObject):
    product = models.ForeignKey(
        CatalogProduct,
        on_delete=models.CASCADE,
        related_name="prices",
        verbose_name=_("product"),
        null=True,
        blank=True,
    )
    stripe_product_id = models.CharField(max_length=255, blank=True)
    nickname = models.CharField(_("nickname"), max_length=250, blank=True)
    lookup_key = models.CharField(_("lookup key"), max_length=250, blank=True, db_index=True)
    currency = models.CharField(_("currency"), max_length=3, blank=True)
    unit_amount = models.BigIntegerField(_("unit amount"), null=True, blank=True)
    recurring_interval = models.CharField(_("interval"), max_length=8, blank=True)
    recurring_interval_count = models.PositiveIntegerField(default=1)
    usage_type = models.CharField(max_length=16, blank=True)
    # ``recurring.meter`` of a metered price: the Stripe billing meter it bills.
    stripe_meter_id = models.CharField(_("Stripe meter"), max_length=255, blank=True)
    price_type = models.CharField(max_length=16, blank=True)

    class Meta:
        ordering = ["stripe_product_id", "unit_amount", "stripe_id"]
        verbose_name = _("imported Stripe price")
        verbose_name_plural = _("imported Stripe prices")

    def __str__(self) -> str:
        product = self.product.name if self.product_id and self.product else self.stripe_product_id
        return f"{product} {self.human_readable_amount}"

    @property
    def reference(self) -> str:
        """How a catalog file names this price: ``lookup:<key>``, else its id."""
        return f"lookup:{self.lookup_key}" if self.lookup_key else self.stripe_id

    @property
    def human_readable_amount(self) -> str:
        """``$12.00 / month``, ``€120.00 / year``, ``¥500 / 3 months``."""
        return format_price(
            self.unit_amount,
            self.currency,
            self.recurring_interval,
            self.recurring_interval_count,
        )


class PlanPrice(models.Model):
    """Maps one approved Stripe price to one plan; a price maps to at most one plan."""

    plan = models.ForeignKey(
        Plan, on_delete=models.CASCADE, related_name="plan_prices", verbose_name=_("plan")
    )
    price = models.OneToOneField(
        CatalogPrice,
        on_delete=models.PROTECT,
        related_name="plan_mapping",
        verbose_name=_("Stripe price"),
        error_messages={"unique": _("This price is already mapped to another plan.")},
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["plan", "price__unit_amount"]
        verbose_name = _("plan price")
        verbose_name_plural = _("plan prices")

    def __str__(self) -> str:
        return f"{self.plan.key} <- {self.price.stripe_id}"

    def clean(self) -> None:
        if self.price_id and self.price.review_state != ReviewState.APPROVED:
            raise ValidationError(
                {"price": _("Only approved prices can be mapped to a plan; review it first.")}
            )
        if self.price_id and (
            hasattr(self.price, "addon_mapping") or hasattr(self.price, "topup_mapping")
        ):
            # A price maps to one plan, one add-on or one top-up pack, never two.
            raise ValidationError(
                {"price": _("This price is already mapped to an add-on or a top-up pack.")}
            )
