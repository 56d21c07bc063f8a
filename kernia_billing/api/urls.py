"""REST routes. Mount them under a prefix of your choice (the example uses ``/api/auth/``)."""

from django.urls import path, re_path

from . import (
    addons,
    batch,
    catalog,
    corrections,
    entitlements,
    grants,
    lifecycle,
    metering,
    reservations,
    subscriptions,
)
from .base import UnknownPathView

app_name = "kernia_billing"

urlpatterns = [
    # Catalog
    path("stripe/catalog/sync", catalog.CatalogSyncView.as_view(), name="stripe-catalog-sync"),
    path("billing/plans", catalog.PlansView.as_view(), name="billing-plans"),
    # Entitlements
    path("billing/check", entitlements.CheckView.as_view(), name="billing-check"),
    path("billing/track", entitlements.TrackView.as_view(), name="billing-track"),
    path("billing/track/batch", batch.BatchTrackView.as_view(), name="billing-track-batch"),
    path("billing/usage", entitlements.UsageView.as_view(), name="billing-usage"),
    path("billing/grants", grants.GrantsView.as_view(), name="billing-grants"),
    path(
        "billing/usage/adjust",
        corrections.UsageAdjustView.as_view(),
        name="billing-usage-adjust",
    ),
    # Reservations
    path(
        "billing/reservations",
        reservations.ReservationsView.as_view(),
        name="billing-reservations",
    ),
    path(
        "billing/reservations/<int:reservation_id>/confirm",
        reservations.ConfirmView.as_view(),
        name="billing-reservation-confirm",
    ),
    path(
        "billing/reservations/<int:reservation_id>/release",
        reservations.ReleaseView.as_view(),
        name="billing-reservation-release",
    ),
    path("billing/addons", addons.AddOnsView.as_view(), name="billing-addons"),
    # Stripe lifecycle
    path("billing/customer", lifecycle.CustomerView.as_view(), name="billing-customer"),
    path("billing/checkout", lifecycle.CheckoutView.as_view(), name="billing-checkout"),
    path(
        "billing/checkout/return",
        lifecycle.CheckoutReturnView.as_view(),
        name="billing-checkout-return",
    ),
    path("billing/portal", lifecycle.PortalView.as_view(), name="billing-portal"),
    # Subscription changes
    path(
        "billing/subscription",
        subscriptions.ChangeView.as_view(),
        name="billing-subscription",
    ),
    path(
        "billing/subscription/preview",
        subscriptions.PreviewView.as_view(),
        name="billing-subscription-preview",
    ),
    path(
        "billing/subscription/cancel",
        subscriptions.CancelView.as_view(),
        name="billing-subscription-cancel",
    ),
    path(
        "billing/subscription/resume",
        subscriptions.ResumeView.as_view(),
        name="billing-subscription-resume",
    ),
    path(
        "billing/invoice/upcoming",
        subscriptions.UpcomingInvoiceView.as_view(),
        name="billing-invoice-upcoming",
    ),
    path(
        "billing/webhooks/health",
        lifecycle.WebhookHealthView.as_view(),
        name="billing-webhooks-health",
    ),
    path(
        "billing/usage-reporting/health",
        metering.ReportingHealthView.as_view(),
        name="billing-usage-reporting-health",
    ),
    # Anything else under billing/ or stripe/catalog/ is a JSON 404, not an HTML page.
    # Only our own namespaces: the prefix stays free for the host project's routes.
    re_path(r"^(?:billing|stripe/catalog)(?:/.*)?$", UnknownPathView.as_view()),
]
