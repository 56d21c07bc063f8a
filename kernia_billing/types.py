"""Frozen result objects returned by the services (and rendered by the doors)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class CheckResult:
    allowed: bool
    feature: str
    kind: str
    reason: str | None = None
    balance: int | None = None
    included: int | None = None
    usage: int | None = None
    unlimited: bool = False
    allow_overage: bool = False
    reset_period: str | None = None
    next_reset_at: datetime | None = None
    plan: str | None = None
    required: int = 1
    # The soonest expiry among the grants with something left; the breakdown on request.
    next_expiry: datetime | None = None
    grants: tuple[Any, ...] | None = None
    # Credit pools: the pool's balance in credits and what one unit costs.
    credit_balance: int | None = None
    credit_cost: int | None = None
    # Metering: this period's overage and its estimated charge (features allowing it).
    overage: OverageEstimate | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TrackResult:
    event_id: int
    feature: str
    amount: int
    balance: int
    usage: int
    included: int
    unlimited: bool
    replayed: bool = False
    created_at: datetime | None = None
    credit_balance: int | None = None
    credit_cost: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class TrackRequest:
    """One event of a batch track."""

    feature: str
    amount: int = 1
    idempotency_key: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    owner: Any = None


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    index: int
    ok: bool
    result: TrackResult | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_fields: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True, slots=True)
class EntitlementState:
    feature: str
    name: str
    kind: str
    granted: bool
    included: int
    usage: int
    balance: int
    unlimited: bool
    allow_overage: bool
    reset_period: str
    period_start: datetime | None
    next_reset_at: datetime | None
    next_expiry: datetime | None = None
    grants: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscriptionState:
    id: str
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    trial_end: datetime | None
    seat_quantity: int | None


@dataclass(frozen=True, slots=True)
class CustomerState:
    customer_id: int
    stripe_customer_id: str | None
    plan: str | None
    plan_name: str | None
    subscription: SubscriptionState | None
    portal_available: bool
    entitlements: tuple[EntitlementState, ...]
    #: This period's overage per metered feature (metering).
    overage: tuple[OverageEstimate, ...] = ()


@dataclass(frozen=True, slots=True)
class OverageEstimate:
    """Overage units of this period and what the overage price makes of them."""

    feature: str
    units: int
    unit: str
    estimated_amount: int | None  # in the currency's minor unit; None without a price
    currency: str
    display: str  # "270 messages · $2.70"


@dataclass(frozen=True, slots=True)
class CorrectionResult:
    """A usage correction (``adjust_usage``) and how it gave billed overage back."""

    correction_id: int
    event_id: int
    feature: str
    amount: int
    balance: int
    usage: int
    reason: str
    #: Overage units given back before Stripe had them (dropped from the outbox).
    unsent_units: int = 0
    #: Overage units cancelled in Stripe (meter event adjustments, 24-hour window).
    cancelled_units: int = 0
    #: Units of a cancelled event that still stand, sent again as a new event.
    resent_units: int = 0
    #: Overage units credited to the customer's Stripe balance (outside the window).
    credited_units: int = 0
    credited_amount: int = 0  # in the currency's minor unit
    currency: str = ""
    replayed: bool = False
    created_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """Counts from a catalog sync."""

    products_created: int = 0
    products_updated: int = 0
    products_unchanged: int = 0
    prices_created: int = 0
    prices_updated: int = 0
    prices_unchanged: int = 0
    meters_created: int = 0
    meters_updated: int = 0
    meters_unchanged: int = 0
    pending_review: int = 0
    flagged: int = 0

    @property
    def created(self) -> int:
        return self.products_created + self.prices_created

    @property
    def updated(self) -> int:
        return self.products_updated + self.prices_updated

    @property
    def unchanged(self) -> int:
        return self.products_unchanged + self.prices_unchanged


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Counts from loading a catalog file (``kernia_load_catalog``)."""

    features_created: int = 0
    features_updated: int = 0
    plans_created: int = 0
    plans_updated: int = 0
    plan_features_created: int = 0
    plan_features_updated: int = 0
    plan_features_removed: int = 0
    prices_mapped: int = 0
    prices_unmapped: int = 0
    prices_approved: int = 0
    addons_loaded: int = 0
    topups_loaded: int = 0
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return any(value for name, value in asdict(self).items() if name != "dry_run")


# --- Stripe state, checkout and reconciliation ----------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionSnapshot:
    """What kernia needs of a Stripe subscription, parsed from any API version."""

    id: str
    stripe_customer_id: str
    status: str
    price_ids: tuple[str, ...]
    current_period_start: datetime | None
    current_period_end: datetime | None
    interval: str = ""
    interval_count: int = 1
    cancel_at_period_end: bool = False
    trial_end: datetime | None = None
    # Quantity of the subscription item whose price maps to the plan (seats).
    quantity: int | None = None
    livemode: bool = False
    # Every item (add-ons: their quantities and periods).
    items: tuple[SubscriptionItemSnapshot, ...] = ()


@dataclass(frozen=True, slots=True)
class SubscriptionItemSnapshot:
    """One subscription item: what add-ons need of it."""

    id: str
    price_id: str
    quantity: int
    current_period_start: datetime | None
    current_period_end: datetime | None


@dataclass(frozen=True, slots=True)
class CheckoutStart:
    url: str
    session_id: str
    stripe_customer_id: str
    price_id: str
    quantity: int


@dataclass(frozen=True, slots=True)
class CheckoutReturn:
    customer_id: int
    session_id: str
    status: str
    subscription_id: str
    plan: str | None


@dataclass(frozen=True, slots=True)
class PortalStart:
    url: str


@dataclass(frozen=True, slots=True)
class Drift:
    """One difference between what is stored and what it should be."""

    kind: str  # "customer" or "ledger"
    customer_id: int
    subject: str  # a customer field, or a feature key
    expected: Any
    actual: Any
    fixed: bool = False

    def __str__(self) -> str:
        state = "fixed" if self.fixed else "drift"
        return (
            f"[{state}] customer {self.customer_id} {self.kind} {self.subject}: "
            f"stored {self.actual!r}, expected {self.expected!r}"
        )


#: ``progress(part, rows done, last id)``: how far a batched audit or reconcile got; the
#: last id resumes it (``kernia_reconcile --after-entitlement``).
Progress = Callable[[str, int, int], None]
