"""Webhook deliveries with their outcome, request and error; health; "process again"."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..conf import billing_settings
from ..models import DeliveryOutcome, WebhookDelivery
from ..selectors import webhook_health
from ..services import webhook_deliveries


class OutcomeFilter(admin.SimpleListFilter):
    title = _("outcome")
    parameter_name = "outcome"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(DeliveryOutcome.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == DeliveryOutcome.PROCESSED:
            return queryset.filter(processed=True)
        if self.value() == DeliveryOutcome.FAILED:
            return queryset.filter(Q(valid=True) | ~Q(exception=""), processed=False)
        if self.value() == DeliveryOutcome.REFUSED:
            return queryset.filter(valid=False, exception="", processed=False)
        return queryset


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    """What reached dj-stripe's endpoint; read-only, with one action."""

    change_list_template = "admin/kernia_billing/webhookdelivery_change_list.html"
    list_display = ["created", "event_type", "outcome_label", "error", "remote_ip"]
    list_filter = [OutcomeFilter, "created"]
    search_fields = ["body", "exception"]
    actions = ["process_again"]
    list_per_page = 50
    readonly_fields = (
        "created",
        "updated",
        "outcome_label",
        "event_type",
        "remote_ip",
        "exception",
        "traceback",
        "request_headers",
        "request_body",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_process_permission(self, request: HttpRequest) -> bool:
        # Processing again changes customers: the billing managers' permission.
        return request.user.has_perm(billing_settings.MANAGE_PERMISSION)

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return super().get_queryset(request).defer("traceback")

    @admin.display(description=_("event type"))
    def event_type(self, obj: WebhookDelivery) -> str:
        try:
            data = json.loads(obj.body)
        except ValueError:
            return "—"
        value = data.get("type") if isinstance(data, dict) else None
        return value if isinstance(value, str) else "—"

    @admin.display(description=_("outcome"))
    def outcome_label(self, obj: WebhookDelivery) -> str:
        outcome = DeliveryOutcome(obj.outcome)
        color = {"processed": "#2e7d32", "failed": "#ba2121", "refused": "#ba2121"}[outcome]
        return format_html('<strong style="color:{}">{}</strong>', color, outcome.label)

    @admin.display(description=_("error"))
    def error(self, obj: WebhookDelivery) -> str:
        if obj.exception:
            return obj.exception
        if obj.outcome == DeliveryOutcome.REFUSED:
            return str(_("Signature did not verify (wrong endpoint secret?)"))
        return ""

    @admin.display(description=_("request headers"))
    def request_headers(self, obj: WebhookDelivery) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.headers, indent=2, sort_keys=True))

    @admin.display(description=_("request body"))
    def request_body(self, obj: WebhookDelivery) -> str:
        try:
            body = json.dumps(json.loads(obj.body), indent=2)
        except ValueError:
            body = obj.body
        return format_html('<pre style="white-space:pre-wrap">{}</pre>', body)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {**(extra_context or {}), "health": webhook_health()}
        return super().changelist_view(request, extra_context)

    @admin.action(description=_("Process again"), permissions=["process"])
    def process_again(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        result = webhook_deliveries.process_again(queryset.select_related("stripe_trigger_account"))
        self.message_user(
            request,
            _(
                "Processed again: %(processed)d succeeded, %(failed)d failed again. "
                "%(refused)d refused (bad signature: not trusted, Stripe retries them), "
                "%(done)d already processed."
            )
            % {
                "processed": result.processed,
                "failed": result.failed,
                "refused": result.refused,
                "done": result.already_processed,
            },
            messages.WARNING if result.failed else messages.SUCCESS,
        )
