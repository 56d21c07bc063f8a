"""Plans (with their Stripe prices and plan features) and features."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _

from ..models import BillingCustomer, CatalogPrice, Feature, Plan, PlanFeature, PlanPrice
from ..selectors import lower_grant_impact
from ..services.catalog import rules
from ..services.entitlements.sync import sync_plan_customers
from .catalog import warn_flagged_prices


class PriceChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        product = obj.product.name if obj.product else obj.stripe_product_id
        lookup = f", {obj.lookup_key}" if obj.lookup_key else ""
        state = "" if obj.active else f" [{_('archived')}]"
        return f"{product} {obj.human_readable_amount} ({obj.stripe_id}{lookup}){state}"


class PlanPriceForm(forms.ModelForm):
    """Only approved prices are offered; one mapped to another plan is refused by name."""

    price = PriceChoiceField(queryset=CatalogPrice.objects.none(), label=_("Stripe price"))

    class Meta:
        model = PlanPrice
        fields = ["price"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        offered = rules.MAPPABLE
        if self.instance.price_id:
            offered |= Q(pk=self.instance.price_id)
        self.fields["price"].queryset = CatalogPrice.objects.filter(offered).select_related(  # type: ignore[attr-defined]
            "product"
        )

    def clean_price(self) -> CatalogPrice:
        price: CatalogPrice = self.cleaned_data["price"]
        other = rules.mapped_plans([price.pk], excluding_mapping=self.instance.pk).get(price.pk)
        if other is not None:
            raise forms.ValidationError(
                _(
                    "Stripe price %(price)s is already mapped to plan %(plan)s; a price maps to "
                    "one plan. Remove it from %(plan)s first."
                ),
                code="mapped_elsewhere",
                params={"price": price.stripe_id, "plan": other.key},
            )
        return price


class PlanPriceInline(admin.TabularInline):
    model = PlanPrice
    form = PlanPriceForm
    extra = 1
    verbose_name = _("Stripe price")
    verbose_name_plural = _("Stripe prices (only approved prices can be mapped)")


CONFIRM_LOWER_FIELD = "confirm_lower_grants"


class PlanForm(forms.ModelForm):
    confirm_lower_grants = forms.BooleanField(
        required=False,
        label=_("Confirm lower grants"),
        help_text=_(
            "Needed when a change lowers or removes what current customers of this plan "
            "hold; the admin says how many customers it affects."
        ),
    )

    class Meta:
        model = Plan
        fields = [
            "name",
            "key",
            "description",
            "is_default",
            "active",
            "display_order",
            "trial_days",
        ]


class PlanFeatureFormSet(forms.BaseInlineFormSet):
    """Refuses, until confirmed, a change that lowers what current customers hold."""

    def clean(self) -> None:
        super().clean()
        if self.instance.pk is None or self.data.get(CONFIRM_LOWER_FIELD):
            return
        problems = []
        for form in self.forms:
            if not form.initial.get("feature") or not hasattr(form, "cleaned_data"):
                continue
            was_unlimited = bool(form.initial.get("unlimited"))
            was_included = int(form.initial.get("included") or 0)
            feature = form.initial["feature"]
            if self.can_delete and form.cleaned_data.get("DELETE"):
                included: int | None = None
            elif form.cleaned_data.get("unlimited") or form.cleaned_data.get(
                "included_from_quantity"
            ):
                continue
            else:
                included = form.cleaned_data.get("included")
                if included is None or (not was_unlimited and included >= was_included):
                    continue
            impact = lower_grant_impact(self.instance, feature, included=included)
            if not impact.customers:
                continue
            key = Feature.objects.filter(pk=feature).values_list("key", flat=True).first()
            change = (
                _("removing %(feature)s") % {"feature": key}
                if included is None
                else _("lowering %(feature)s from %(old)s to %(new)d")
                % {
                    "feature": key,
                    "old": _("unlimited") if was_unlimited else was_included,
                    "new": included,
                }
            )
            problems.append(
                _(
                    "%(change)s affects %(customers)d customer(s) on this plan; "
                    "%(negative)d of them would be left with a negative balance."
                )
                % {"change": change, "customers": impact.customers, "negative": impact.negative}
            )
        if problems:
            raise forms.ValidationError(
                [*problems, _('Tick "Confirm lower grants" and save again to apply it.')],
                code="confirm_lower_grants",
            )


class PlanFeatureInline(admin.TabularInline):
    model = PlanFeature
    formset = PlanFeatureFormSet
    extra = 1
    fields = [
        "feature",
        "included",
        "unlimited",
        "reset_period",
        "allow_overage",
        "included_from_quantity",
    ]

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "feature":
            kwargs["queryset"] = Feature.objects.filter(archived=False)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_queryset(self, request: HttpRequest) -> QuerySet[PlanFeature]:
        return super().get_queryset(request).select_related("feature", "plan")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    form = PlanForm
    list_display = ["name", "key", "is_default", "active", "display_order", "prices", "features"]
    list_filter = ["active", "is_default"]
    search_fields = ["key", "name"]
    prepopulated_fields = {"key": ["name"]}
    inlines = [PlanPriceInline, PlanFeatureInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Plan]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                price_count=Count("plan_prices", distinct=True),
                feature_count=Count("plan_features", distinct=True),
            )
        )

    @admin.display(description=_("prices"), ordering="price_count")
    def prices(self, obj: Any) -> int:
        return int(obj.price_count)

    @admin.display(description=_("features"), ordering="feature_count")
    def features(self, obj: Any) -> int:
        return int(obj.feature_count)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if request.method == "GET":
            warn_flagged_prices(request)
        return super().changelist_view(request, extra_context)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method == "GET":
            warn_flagged_prices(request)
        return super().change_view(request, object_id, form_url, extra_context)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        """A plan with billing customers is protected: say why, and nothing else.

        Django would otherwise report a missing permission to delete billing customers,
        as if deleting the plan deleted them; the database protects them instead.
        """
        to_delete, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        on_plan = dict(
            BillingCustomer.objects.filter(plan__in=list(objs))
            .values_list("plan__name")
            .annotate(n=Count("pk"))
        )
        if on_plan:
            protected = [
                _(
                    "%(plan)s: %(count)d billing customer(s) are on this plan. Mark the plan "
                    "inactive instead (it leaves the pricing table), or move its customers "
                    "to another plan first."
                )
                % {"plan": name, "count": count}
                for name, count in on_plan.items()
            ]
            perms_needed = set()
        return to_delete, model_count, perms_needed, protected

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Included amounts follow the plan, and a new default plan reaches customers
        # without a subscription: bring them in line now.
        sync_plan_customers([form.instance.pk])


class FeatureForm(forms.ModelForm):
    """A feature; ``credit_cost`` left empty is 1 (it only matters with a credit pool)."""

    class Meta:
        model = Feature
        fields = [
            "key",
            "name",
            "kind",
            "unit",
            "description",
            "archived",
            "credit_pool",
            "credit_cost",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["credit_cost"].required = False

    def clean_credit_cost(self) -> int:
        return int(self.cleaned_data.get("credit_cost") or 1)


@admin.register(Feature)
class FeatureAdmin(admin.ModelAdmin):
    form = FeatureForm
    list_display = ["key", "name", "kind", "unit", "credit_pool", "archived"]
    list_filter = ["kind", "archived"]
    list_select_related = ["credit_pool"]
    search_fields = ["key", "name", "description"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if obj is not None and obj.in_use():
            readonly += [f for f in Feature.FROZEN_WHEN_IN_USE if f not in readonly]
        return readonly

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        feature = self.get_object(request, object_id)
        if request.method == "GET" and feature is not None and feature.in_use():
            messages.info(
                request,
                _(
                    "Customers use this feature, so its key and kind are read-only. To rename "
                    "it or change its kind, add a new feature, map it to the plans, move your "
                    "code to the new key, then archive this one."
                ),
            )
        return super().change_view(request, object_id, form_url, extra_context)
