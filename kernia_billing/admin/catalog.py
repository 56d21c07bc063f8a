"""Review queue of imported Stripe products and prices.

The rows mirror Stripe, so they are read-only here; what staff decide (approve,
ignore, map to a plan) goes through :mod:`kernia_billing.services.catalog`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..exceptions import CatalogError, StripeUnavailable
from ..models import CatalogPrice, CatalogProduct, Plan, ReviewState
from ..selectors import flagged_mapped_prices
from ..services import catalog as catalog_service


def warn_flagged_prices(request: HttpRequest) -> None:
    """One admin warning per mapped price that Stripe archived or deleted."""
    for price in flagged_mapped_prices():
        state = _("deleted") if price.deleted_in_stripe else _("archived")
        messages.warning(
            request,
            _(
                "Stripe price %(price)s (%(amount)s) is mapped to plan %(plan)s but is %(state)s "
                "in Stripe. Map a current price to the plan or remove this one."
            )
            % {
                "price": price.stripe_id,
                "amount": price.human_readable_amount,
                "plan": price.plan_mapping.plan.key,
                "state": state,
            },
        )


class ReviewedStripeObjectAdmin(admin.ModelAdmin):
    """Read-only mirror rows with review actions and a "Sync from Stripe" button."""

    change_list_template = "admin/kernia_billing/catalog_change_list.html"
    actions = ["approve_selected", "ignore_selected"]
    list_per_page = 100

    # Mirrored Stripe data: nobody adds, edits or deletes it here.
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "show_save_and_continue": False}
        extra_context.update(show_save=False, show_save_and_add_another=False)
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        opts = self.model._meta
        sync = path(
            "sync/",
            self.admin_site.admin_view(self.sync_view),
            name=f"{opts.app_label}_{opts.model_name}_sync",
        )
        return [sync, *super().get_urls()]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = dict(extra_context or {})
        if self.has_change_permission(request):
            opts = self.model._meta
            extra_context["sync_url"] = reverse(
                f"admin:{opts.app_label}_{opts.model_name}_sync", current_app=self.admin_site.name
            )
        if request.method == "GET":
            warn_flagged_prices(request)
        return super().changelist_view(request, extra_context)

    def sync_view(self, request: HttpRequest) -> HttpResponse:
        """POST: run the same catalog sync as the command and the REST endpoint."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        opts = self.model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        try:
            result = catalog_service.sync_catalog()
        except StripeUnavailable as exc:
            self.message_user(request, _("Sync failed: %s") % exc.message, messages.ERROR)
            return HttpResponseRedirect(changelist)
        self.message_user(
            request,
            _(
                "Synced from Stripe. Products: %(pc)d new, %(pu)d updated, %(pn)d unchanged. "
                "Prices: %(rc)d new, %(ru)d updated, %(rn)d unchanged. "
                "%(pending)d awaiting review."
            )
            % {
                "pc": result.products_created,
                "pu": result.products_updated,
                "pn": result.products_unchanged,
                "rc": result.prices_created,
                "ru": result.prices_updated,
                "rn": result.prices_unchanged,
                "pending": result.pending_review,
            },
            messages.SUCCESS,
        )
        return HttpResponseRedirect(changelist)

    @admin.action(description=_("Approve selected"), permissions=["change"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = catalog_service.approve(queryset, request.user)
        self.message_user(request, _("%d approved.") % count, messages.SUCCESS)

    @admin.action(description=_("Ignore selected"), permissions=["change"])
    def ignore_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        try:
            count = catalog_service.ignore(queryset, request.user)
        except CatalogError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, _("%d ignored.") % count, messages.SUCCESS)

    @admin.display(description=_("review"), ordering="review_state")
    def review(self, obj: Any) -> str:
        if obj.deleted_in_stripe:
            return format_html(
                "{} <small>({})</small>", obj.get_review_state_display(), _("deleted")
            )
        return str(obj.get_review_state_display())


@admin.register(CatalogProduct)
class CatalogProductAdmin(ReviewedStripeObjectAdmin):
    list_display = ["name", "stripe_id", "active", "review", "reviewed_by", "synced_at"]
    list_filter = ["review_state", "active", "deleted_in_stripe", "livemode"]
    search_fields = ["name", "stripe_id"]
    list_select_related = ["reviewed_by"]


class MappedFilter(admin.SimpleListFilter):
    title = _("mapped to a plan")
    parameter_name = "mapped"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Yes")), ("no", _("No")), ("flagged", _("Yes, but archived/deleted"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(plan_mapping__isnull=False)
        if self.value() == "no":
            return queryset.filter(plan_mapping__isnull=True)
        if self.value() == "flagged":
            return queryset.filter(pk__in=flagged_mapped_prices().values("pk"))
        return queryset


@admin.register(CatalogPrice)
class CatalogPriceAdmin(ReviewedStripeObjectAdmin):
    list_display = [
        "stripe_id",
        "product_name",
        "price",
        "lookup_key",
        "active",
        "review",
        "plan",
    ]
    list_filter = [
        "review_state",
        MappedFilter,
        "active",
        "deleted_in_stripe",
        "currency",
        "recurring_interval",
        "livemode",
    ]
    search_fields = ["stripe_id", "lookup_key", "nickname", "product__name", "stripe_product_id"]
    list_select_related = ["product", "plan_mapping__plan"]
    actions = ["approve_selected", "ignore_selected", "map_to_plan"]

    @admin.display(description=_("product"), ordering="product__name")
    def product_name(self, obj: CatalogPrice) -> str:
        return obj.product.name if obj.product else obj.stripe_product_id

    @admin.display(description=_("price"), ordering="unit_amount")
    def price(self, obj: CatalogPrice) -> str:
        return obj.human_readable_amount

    @admin.display(description=_("plan"))
    def plan(self, obj: CatalogPrice) -> str:
        mapping = getattr(obj, "plan_mapping", None)
        if mapping is None:
            return "—"
        if obj.deleted_in_stripe or not obj.active:
            state = _("deleted in Stripe") if obj.deleted_in_stripe else _("archived in Stripe")
            return format_html(
                '{} <strong style="color:#ba2121">⚠ {}</strong>', mapping.plan.key, state
            )
        return mapping.plan.key

    @admin.action(description=_("Map to plan…"), permissions=["change"])
    def map_to_plan(self, request: HttpRequest, queryset: QuerySet[CatalogPrice]) -> Any:
        """Ask which plan, then map the selected approved prices to it."""
        if request.POST.get("post") == "yes":
            plan = Plan.objects.filter(pk=request.POST.get("plan") or 0).first()
            if plan is None:
                self.message_user(request, _("Choose a plan."), messages.ERROR)
                return None
            try:
                created = catalog_service.map_prices_to_plan(queryset, plan, request.user)
            except CatalogError as exc:
                self.message_user(request, exc.message, messages.ERROR)
                return None
            self.message_user(
                request,
                _("%(count)d price(s) mapped to plan %(plan)s.")
                % {"count": created, "plan": plan.key},
                messages.SUCCESS,
            )
            return None
        prices = list(queryset.select_related("product", "plan_mapping__plan"))
        blocked = []
        elsewhere = []
        for price in prices:
            mapping = getattr(price, "plan_mapping", None)
            price.mapped_plan = mapping.plan.key if mapping else ""  # type: ignore[attr-defined]
            if mapping is not None:
                elsewhere.append(f"{price.stripe_id} ({mapping.plan.key})")
            if price.review_state != ReviewState.APPROVED:
                blocked.append(f"{price.stripe_id} ({price.get_review_state_display()})")
        if len(blocked) == len(prices):
            # Nothing here could be mapped: say so instead of offering a form that fails.
            self.message_user(
                request,
                _("None of the selected prices is approved; approve them first: %(prices)s.")
                % {"prices": ", ".join(blocked)},
                messages.ERROR,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": _("Map prices to a plan"),
            "opts": self.model._meta,
            "queryset": prices,
            # No plan is pre-selected: the default (free) plan first in the list must
            # not receive a paid price because staff clicked through.
            "plans": Plan.objects.all(),
            "blocked": blocked,
            "mapped_elsewhere": elsewhere,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/kernia_billing/map_to_plan.html", context)
