"""Admin: imported Stripe meters and the overage outbox (what was sent, what Stripe parked)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..exceptions import CatalogError
from ..models import Meter, OverageReport, ReviewState, UsageCorrection
from ..services.metering.catalog import review_meters
from ..services.metering.sender import requeue
from .catalog import ReviewedStripeObjectAdmin


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]


@admin.register(Meter)
class MeterAdmin(ReviewedStripeObjectAdmin):
    """Imported meters: read-only, with the review actions products and prices have."""

    list_display = ["display_name", "event_name", "stripe_id", "status", "review", "reviewed_by"]
    list_filter = ["status", "review_state", "livemode"]
    search_fields = ["stripe_id", "event_name", "display_name"]
    list_select_related = ["reviewed_by"]

    @admin.action(description=_("Approve selected"), permissions=["change"])
    def approve_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        count = review_meters(queryset, ReviewState.APPROVED, request.user)
        self.message_user(request, _("%d approved.") % count, messages.SUCCESS)

    @admin.action(description=_("Ignore selected"), permissions=["change"])
    def ignore_selected(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        try:
            count = review_meters(queryset, ReviewState.IGNORED, request.user)
        except CatalogError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return
        self.message_user(request, _("%d ignored.") % count, messages.SUCCESS)


@admin.register(OverageReport)
class OverageReportAdmin(_ReadOnly):
    list_display = [
        "identifier",
        "customer",
        "feature",
        "value",
        "occurred_at",
        "status",
        "attempts",
        "last_error",
    ]
    list_filter = ["status", "kind", "feature"]
    search_fields = ["identifier", "stripe_customer_id", "last_error"]
    list_select_related = ["customer__owner_type", "feature"]
    date_hierarchy = "occurred_at"
    actions = ["requeue_selected"]

    @admin.action(description=_("Send parked reports again"), permissions=["change"])
    def requeue_selected(self, request: HttpRequest, queryset: QuerySet[OverageReport]) -> None:
        count = requeue(queryset.values_list("pk", flat=True))
        self.message_user(
            request, _("%(count)d report(s) queued again.") % {"count": count}, messages.SUCCESS
        )


@admin.register(UsageCorrection)
class UsageCorrectionAdmin(_ReadOnly):
    """Usage corrections (``adjust_usage`` and ``POST billing/usage/adjust``): who, why,
    and how billed overage was given back."""

    list_display = [
        "created_at",
        "customer",
        "feature",
        "amount",
        "reason",
        "adjusted_by",
        "cancelled_units",
        "credited_units",
        "credited_amount",
    ]
    list_filter = ["feature"]
    search_fields = ["reason", "stripe_balance_transaction_id"]
    list_select_related = ["customer__owner_type", "feature", "adjusted_by"]
    date_hierarchy = "created_at"
