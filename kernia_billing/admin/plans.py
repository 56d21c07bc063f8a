"""Plans (with their Stripe prices and plan features) and features."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.translation import gettext_lazy as _

from ..models import CatalogPrice, Feature, Plan, PlanFeature, PlanPrice
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


class PlanFeatureInline(admin.TabularInline):
    model = PlanFeature
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

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        # Included amounts follow the plan, and a new default plan reaches customers
        # without a subscription: bring them in line now.
        sync_plan_customers([form.instance.pk])


@admin.register(Feature)
class FeatureAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "kind", "unit", "archived"]
    list_filter = ["kind", "archived"]
    search_fields = ["key", "name", "description"]
