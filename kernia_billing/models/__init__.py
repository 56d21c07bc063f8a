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
from .metering import Meter, OverageReport, ReportKind, ReportStatus
from .usage import UsageEvent

__all__ = [
    "BillingCustomer",
    "CatalogPrice",
    "CatalogProduct",
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
]
