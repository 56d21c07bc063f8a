"""Models, split by sub-domain: catalog, customers, entitlements, grants, usage."""

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
from .customers import BillingCustomer
from .entitlements import Entitlement
from .grants import Grant, GrantSource
from .usage import UsageEvent

__all__ = [
    "CONSUMABLE_KINDS",
    "BillingCustomer",
    "CatalogPrice",
    "CatalogProduct",
    "Entitlement",
    "Feature",
    "FeatureKind",
    "Grant",
    "GrantSource",
    "Plan",
    "PlanFeature",
    "PlanPrice",
    "ResetPeriod",
    "ReviewState",
    "UsageEvent",
]
