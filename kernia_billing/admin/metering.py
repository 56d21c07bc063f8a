"""Admin: imported Stripe meters and the overage outbox (what was sent, what Stripe parked)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..models import Meter, OverageReport
from ..services.metering.sender import requeue


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]


@admin.register(Meter)
class MeterAdmin(_ReadOnly):
    list_display = ["display_name", "event_name", "stripe_id", "status", "review_state"]
    list_filter = ["status", "review_state", "livemode"]
    search_fields = ["stripe_id", "event_name", "display_name"]


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
