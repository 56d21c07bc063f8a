"""Daily usage totals in the admin: read from the rollups, never summed from the ledger."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from ..models import UsageRollup
from .customers import _with_owner_search
from .readonly import ReadOnlyAdminMixin


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["day", "customer", "feature", "amount", "events"]
    list_filter = ["feature"]
    date_hierarchy = "day"
    search_fields = ["=customer__stripe_customer_id", "=customer__owner_id"]
    list_select_related = ["customer__owner_type", "feature"]
    ordering = ["-day", "customer", "feature"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageRollup]:
        return super().get_queryset(request).prefetch_related("customer__owner")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageRollup], search_term: str
    ) -> tuple[QuerySet[UsageRollup], Any]:
        return _with_owner_search(self, request, queryset, search_term, prefix="customer__")
