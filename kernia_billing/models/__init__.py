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
    "Plan",
    "PlanFeature",
    "PlanPrice",
    "ResetPeriod",
    "ReviewState",
    "UsageEvent",
    "WebhookDelivery",
]
