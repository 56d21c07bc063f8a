"""Models, split by sub-domain: catalog, customers, entitlements, usage."""

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

__all__ = [
    "BillingCustomer",
    "CatalogPrice",
    "CatalogProduct",
    "Entitlement",
    "Feature",
    "FeatureKind",
    "Plan",
    "PlanFeature",
    "PlanPrice",
    "ResetPeriod",
    "ReviewState",
    "UsageEvent",
]
