"""Billing customers with their entitlements and usage, and the usage ledger.

Everything here is read-only: Stripe (through the webhooks) and the services write
these rows, so the admin shows them and changes nothing. Lists select or prefetch
what they show, so a page costs the same number of queries whatever its length.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from ..models import BillingCustomer, Entitlement, UsageEvent
from ..selectors import daily_usage, history_features, history_page, owner_search
from .grants import GrantCreditsMixin
from .readonly import ReadOnlyAdminMixin

#: Usage events shown on a customer's page; the rest are one click away.
RECENT_USAGE_EVENTS = 50
#: Days of daily totals shown on a customer's page.
DAILY_USAGE_DAYS = 30


def _with_owner_search(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: Any, term: str, *, prefix: str
) -> tuple[Any, bool]:
    """The admin's own search, or-ed with a search by the owner's name and email."""
    results, duplicates = admin.ModelAdmin.get_search_results(model_admin, request, queryset, term)
    if term.strip():
        results = results | queryset.filter(owner_search(term.strip(), prefix=prefix))
    return results, duplicates


class EntitlementInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Entitlement
    readonly_fields = (
        "feature",
        "included",
        "unlimited",
        "usage",
        "balance",
        "allow_overage",
        "reset_period",
        "period_start",
        "next_reset_at",
    )
    fields = readonly_fields
    extra = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet[Entitlement]:
        return super().get_queryset(request).select_related("feature").order_by("feature__key")

    @admin.display(description=_("balance"))
    def balance(self, obj: Entitlement) -> Any:
        return "∞" if obj.unlimited else obj.balance


@admin.register(BillingCustomer)
class BillingCustomerAdmin(GrantCreditsMixin, ReadOnlyAdminMixin, admin.ModelAdmin):
    change_list_template = "admin/kernia_billing/billingcustomer_change_list.html"
    list_display = [
        "owner_name",
        "plan",
        "subscription_status",
        "current_period_end",
        "cancel_at_period_end",
        "stripe_customer_id",
    ]
    list_filter = ["plan", "subscription_status"]
    search_fields = ["stripe_customer_id", "stripe_subscription_id", "=owner_id"]
    list_select_related = ["plan", "owner_type"]
    fieldsets = [
        (None, {"fields": ["owner_name", "plan", "stripe_customer_id", "livemode"]}),
        (
            _("Subscription"),
            {
                "fields": [
                    "stripe_subscription_id",
                    "subscription_status",
                    ("current_period_start", "current_period_end"),
                    ("billing_interval", "billing_interval_count"),
                    "cancel_at_period_end",
                    "trial_end",
                    "seat_quantity",
                    "stripe_state_at",
                ]
            },
        ),
        (_("Recent usage"), {"fields": ["daily_usage", "recent_usage"]}),
    ]
    readonly_fields = ["owner_name", "daily_usage", "recent_usage"]
    inlines = [EntitlementInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BillingCustomer]:
        # One query per owner model for the whole page, not one per row. (No
        # select_related here: the changelist applies list_select_related only to a
        # queryset without one.)
        return super().get_queryset(request).prefetch_related("owner")

    @admin.display(description=_("owner"), ordering="owner_id")
    def owner_name(self, obj: BillingCustomer) -> str:
        return obj.owner_label

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[BillingCustomer], search_term: str
    ) -> tuple[QuerySet[BillingCustomer], bool]:
        return _with_owner_search(self, request, queryset, search_term, prefix="")

    @admin.display(description=_("daily totals (last 30 days, UTC)"))
    def daily_usage(self, obj: BillingCustomer) -> str:
        """From the daily rollups: 30 rows at most per feature, whatever the ledger's size."""
        today = timezone.now().astimezone(UTC).date()
        since = datetime.combine(today - timedelta(days=DAILY_USAGE_DAYS - 1), time.min, UTC)
        totals = daily_usage(obj.pk, since=since)
        if not totals:
            return str(_("No usage in the last 30 days."))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((t["date"], t["feature"], f"{t['amount']:+d}", t["events"]) for t in reversed(totals)),
        )
        return format_html(
            '<table data-testid="daily-usage"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("day"),
            _("feature"),
            _("amount"),
            _("events"),
            rows,
        )

    @admin.display(description=_("last usage events"))
    def recent_usage(self, obj: BillingCustomer) -> str:
        # Read per feature (selectors.history_page): the ledger has no customer + time index.
        features = history_features(obj.pk)
        events = history_page(
            UsageEvent.objects.filter(customer=obj, feature_id__in=features).select_related(
                "feature"
            ),
            features,
            0,
            RECENT_USAGE_EVENTS,
        )
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    e.created_at,
                    e.feature.key,
                    f"{e.amount:+d}",
                    e.balance_after,
                    e.idempotency_key or "",
                )
                for e in events
            ),
        )
        everything = reverse(
            "admin:kernia_billing_usageevent_changelist", current_app=self.admin_site.name
        )
        link = format_html(
            '<a href="{}?customer__id__exact={}">{}</a>', everything, obj.pk, _("All usage events")
        )
        if not rows:
            return format_html("{} {}", _("No usage yet."), link)
        return format_html(
            '<table data-testid="recent-usage"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table><p>{}</p>",
            _("time"),
            _("feature"),
            _("amount"),
            _("balance after"),
            _("idempotency key"),
            rows,
            link,
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "webhook_health_url": reverse(
                "admin:kernia_billing_webhookdelivery_changelist", current_app=self.admin_site.name
            ),
        }
        return super().changelist_view(request, extra_context)


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "customer",
        "feature",
        "amount",
        "balance_after",
        "usage_after",
        "idempotency_key",
    ]
    list_filter = ["feature"]
    date_hierarchy = "created_at"
    search_fields = ["idempotency_key", "=customer__stripe_customer_id", "=customer__owner_id"]
    list_select_related = ["customer__owner_type", "feature"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[UsageEvent]:
        # The owner (name, email) of every row's customer, one query per owner model.
        return super().get_queryset(request).prefetch_related("customer__owner")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[UsageEvent], search_term: str
    ) -> tuple[QuerySet[UsageEvent], bool]:
        return _with_owner_search(self, request, queryset, search_term, prefix="customer__")
