"""Models, split by sub-domain: catalog, customers, entitlements, usage, webhooks."""

from .catalog import (
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
from .customers import BillingCustomer
from .entitlements import Entitlement
from .metering import Meter, OverageReport, ReportKind, ReportStatus
from .usage import UsageEvent
from .webhooks import DeliveryOutcome, WebhookDelivery

__all__ = [
    "BillingCustomer",
    "CatalogPrice",
    "CatalogProduct",
    "DeliveryOutcome",
    "Entitlement",
    "Feature",
    "FeatureKind",
    "Meter",
    "OverageReport",
    "Plan",
    "PlanFeature",
    "PlanPrice",
    "ReportKind",
    "ReportStatus",
    "ResetPeriod",
    "ReviewState",
    "UsageEvent",
    "WebhookDelivery",
]
