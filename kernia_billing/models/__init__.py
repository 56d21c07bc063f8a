"""Models, split by sub-domain: catalog, customers, entitlements, grants, usage, webhooks."""

from .addons import AddOn, AddOnFeature, AddOnItem, AddOnPrice, AddOnReset, TopUpPack
from .catalog import (
    CONSUMABLE_KINDS,
    CatalogPrice,
    CatalogProduct,
    Feature,
    FeatureKind,
    Plan,
    PlanFeature,
    PlanPrice,
    ResetPeriod,
    ReviewState,
)
from .corrections import UsageCorrection
from .customers import BillingCustomer
from .entitlements import Entitlement
from .grants import Grant, GrantSource
from .metering import Meter, OverageReport, ReportKind, ReportStatus
from .reservations import Reservation, ReservationStatus
from .rollups import ArchivedUsageEvent, UsageRollup
from .usage import UsageEvent
from .webhooks import DeliveryOutcome, WebhookDelivery

__all__ = [
    "CONSUMABLE_KINDS",
    "AddOn",
    "AddOnFeature",
    "AddOnItem",
    "AddOnPrice",
    "AddOnReset",
    "ArchivedUsageEvent",
    "BillingCustomer",
    "CatalogPrice",
    "CatalogProduct",
    "DeliveryOutcome",
    "Entitlement",
    "Feature",
    "FeatureKind",
    "Grant",
    "GrantSource",
    "Meter",
    "OverageReport",
    "Plan",
    "PlanFeature",
    "PlanPrice",
    "ReportKind",
    "ReportStatus",
    "Reservation",
    "ReservationStatus",
    "ResetPeriod",
    "ReviewState",
    "TopUpPack",
    "UsageCorrection",
    "UsageEvent",
    "UsageRollup",
    "WebhookDelivery",
]
