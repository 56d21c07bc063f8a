"""Admin: reservations (holds) read-only, with "Release" giving holds back through the service."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from ..exceptions import BillingError
from ..models import Reservation, ReservationStatus
from ..services.reservations import release
from .readonly import ReadOnlyAdminMixin


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Holds are written by the services only: listed and viewed here, released by action."""

    list_display = [
        "created_at",
        "customer",
        "feature",
        "amount",
        "held",
        "status",
        "expires_at",
        "actual",
    ]
    list_filter = ["status", "feature"]
    list_select_related = ["customer__owner_type", "feature"]
    search_fields = ["=customer__owner_id", "=customer__stripe_customer_id", "idempotency_key"]
    date_hierarchy = "created_at"
    actions = ["release_selected"]

    def has_release_permission(self, request: HttpRequest) -> bool:
        # Releasing changes balances: the model's change permission, though the row itself
        # is never edited in a form.
        return request.user.has_perm("kernia_billing.change_reservation")

    @admin.action(description=_("Release (give the hold back)"), permissions=["release"])
    def release_selected(self, request: HttpRequest, queryset: QuerySet[Reservation]) -> None:
        released = skipped = 0
        open_ids = queryset.filter(status=ReservationStatus.OPEN).values_list("pk", flat=True)
        for reservation_id in list(open_ids):
            try:
                result = release(reservation_id)
            except BillingError:  # confirmed meanwhile
                skipped += 1
                continue
            if result.replayed:
                skipped += 1  # closed meanwhile (expired, or released by someone else)
            else:
                released += 1
        skipped += queryset.exclude(pk__in=list(open_ids)).count()
        self.message_user(
            request,
            _("Released %(released)d reservation(s); %(skipped)d were not open.")
            % {"released": released, "skipped": skipped},
            messages.SUCCESS,
        )
