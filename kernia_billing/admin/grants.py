"""Admin: "Grant credits…" on billing customers (a form, then a confirmation), and grants.

The action calls :func:`kernia_billing.services.grants.issue.grant` for each selected
customer, as ``granted_by`` the signed-in staff member, with an idempotency key made
when the confirmation page is shown, so a double submit grants once. Only staff holding
the manage permission see it.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext_lazy as _

from ..api.owners import can_manage_billing
from ..exceptions import BillingError
from ..models import CONSUMABLE_KINDS, BillingCustomer, Feature, Grant, GrantSource
from ..services.grants import issue
from .readonly import ReadOnlyAdminMixin


class GrantCreditsForm(forms.Form):
    feature = forms.ModelChoiceField(
        queryset=Feature.objects.filter(kind__in=CONSUMABLE_KINDS, archived=False),
        label=_("Feature"),
    )
    amount = forms.IntegerField(
        label=_("Amount"), help_text=_("Negative takes unconsumed credits back.")
    )
    expires_at = forms.DateTimeField(label=_("Expires at"), required=False)
    source = forms.ChoiceField(
        choices=[
            (GrantSource.ADJUSTMENT, GrantSource.ADJUSTMENT.label),
            (GrantSource.PROMOTION, GrantSource.PROMOTION.label),
        ],
        initial=GrantSource.ADJUSTMENT,
    )
    reason = forms.CharField(label=_("Reason"), max_length=issue.MAX_REASON_LENGTH)

    def clean_amount(self) -> int:
        amount = self.cleaned_data["amount"]
        if amount == 0:
            raise forms.ValidationError(_("Must not be zero."))
        return int(amount)


class GrantCreditsMixin:
    """Adds the "Grant credits…" action to the billing customer admin."""

    actions: Any = ["grant_credits"]

    def has_grant_permission(self, request: HttpRequest) -> bool:
        return can_manage_billing(request.user)

    @admin.action(description=_("Grant credits…"), permissions=["grant"])
    def grant_credits(
        self, request: HttpRequest, queryset: QuerySet[BillingCustomer]
    ) -> HttpResponse | None:
        model_admin: Any = self
        step = request.POST.get("step", "")
        form = GrantCreditsForm(request.POST if step else None)
        if step and form.is_valid():
            if step == "confirm" and request.POST.get("token"):
                self._apply(request, queryset, form, request.POST["token"])
                return None
            step = "review"
        else:
            step = "form"
        context = {
            **model_admin.admin_site.each_context(request),
            "title": _("Grant credits"),
            "opts": model_admin.model._meta,
            "queryset": queryset,
            "form": form,
            "step": step,
            "token": uuid.uuid4().hex,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        request.current_app = model_admin.admin_site.name
        return TemplateResponse(request, "admin/kernia_billing/grant_credits.html", context)

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[BillingCustomer],
        form: GrantCreditsForm,
        token: str,
    ) -> None:
        model_admin: Any = self
        data = form.cleaned_data
        done = 0
        for customer in queryset.order_by("pk"):
            try:
                issue.grant(
                    customer,
                    data["feature"].key,
                    data["amount"],
                    expires_at=data["expires_at"],
                    reason=data["reason"],
                    source=data["source"],
                    granted_by=request.user,
                    idempotency_key=f"admin:{token[:64]}:{customer.pk}",
                )
                done += 1
            except BillingError as error:
                model_admin.message_user(request, f"{customer}: {error.message}", messages.ERROR)
        model_admin.message_user(
            request,
            _("Granted %(amount)s %(feature)s to %(count)d customer(s).")
            % {"amount": data["amount"], "feature": data["feature"].key, "count": done},
            messages.SUCCESS,
        )


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Grants are written by the services only: listed and viewed here, never edited."""

    list_display = [
        "created_at",
        "customer",
        "feature",
        "source",
        "amount",
        "consumed",
        "expired",
        "revoked",
        "expires_at",
        "reason",
    ]
    list_filter = ["source", "feature"]
    list_select_related = ["customer__owner_type", "feature"]
    search_fields = ["=customer__owner_id", "=customer__stripe_customer_id", "reason"]
