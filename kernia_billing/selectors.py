"""Reads for the API, the admin and the demo. Nothing here writes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import CharField, Count, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone
from djstripe.models import WebhookEventTrigger

from .conf import billing_settings
from .exceptions import AnonymousOwner, InvalidOwner, UnknownFeature
from .models import (
    BillingCustomer,
    CatalogPrice,
    CatalogProduct,
    Entitlement,
    Feature,
    Plan,
    PlanFeature,
    PlanPrice,
    ReviewState,
    UsageEvent,
    UsageRollup,
)

# --- customers ---------------------------------------------------------------------------


def owner_ref(owner: Any) -> tuple[int, str]:
    """``(content type id, primary key)`` of a user or organization; no query once cached."""
    if isinstance(owner, BillingCustomer):
        return owner.owner_type_id, owner.owner_id
    if getattr(owner, "is_anonymous", False) is True:
        raise AnonymousOwner()
    if owner is None or getattr(owner, "pk", None) is None:
        raise InvalidOwner()
    content_type = ContentType.objects.get_for_model(owner, for_concrete_model=True)
    return content_type.pk, str(owner.pk)


def get_customer(owner: Any) -> BillingCustomer | None:
    if isinstance(owner, BillingCustomer):
        return owner
    owner_type_id, owner_id = owner_ref(owner)
    return (
        BillingCustomer.objects.select_related("plan")
        .filter(owner_type_id=owner_type_id, owner_id=owner_id)
        .first()
    )


# --- plans -------------------------------------------------------------------------------


def default_plan() -> Plan | None:
    return Plan.objects.filter(is_default=True, active=True).first()


def plan_for_prices(price_ids: tuple[str, ...] | list[str]) -> Plan | None:
    """The plan that the given Stripe prices map to (the highest-ordered one if several)."""
    if not price_ids:
        return None
    return (
        Plan.objects.filter(plan_prices__price__stripe_id__in=list(price_ids))
        .order_by("-display_order", "key")
        .first()
    )


def status_entitles(status: str) -> bool:
    return status in billing_settings.ENTITLING_STATUSES


# --- catalog review ----------------------------------------------------------------------


def pending_review_count() -> int:
    """Decisions that staff still owe: pending prices, and pending products with no
    pending price (a product with pending prices is settled by reviewing them, see
    ``services.catalog.review._settle_products``). Rows deleted in Stripe need no decision."""
    pending = Q(review_state=ReviewState.PENDING, deleted_in_stripe=False)
    pending_prices = CatalogPrice.objects.filter(pending)
    return (
        pending_prices.count()
        + CatalogProduct.objects.filter(pending)
        .exclude(pk__in=pending_prices.filter(product__isnull=False).values("product_id"))
        .count()
    )


def feature_filter_id(key: str | None) -> int | None:
    """The id of the feature a list filter names (None: no filter); unknown keys raise."""
    if not key:
        return None
    feature_id = Feature.objects.filter(key=key).values_list("pk", flat=True).first()
    if feature_id is None:
        raise UnknownFeature(f"No such feature: {key!r}.", fields={"feature": key})
    return feature_id


def flagged_mapped_prices() -> QuerySet[CatalogPrice]:
    """Prices mapped to a plan that Stripe has archived or deleted."""
    return (
        CatalogPrice.objects.filter(plan_mapping__isnull=False)
        .filter(Q(active=False) | Q(deleted_in_stripe=True))
        .select_related("plan_mapping__plan")
    )


# --- usage history (GET billing/usage) ---------------------------------------------------


def owner_search(term: str, *, prefix: str = "") -> Q:
    """Billing customers whose owner's name or email contains ``term``.

    The owner is generic, so the admin's ``search_fields`` cannot reach it: users match
    on username, email, first and last name; organizations on their name (or slug).
    """
    models: list[tuple[Any, tuple[str, ...]]] = [
        (get_user_model(), ("username", "email", "first_name", "last_name"))
    ]
    if billing_settings.ORGANIZATION_MODEL:
        models.append((apps.get_model(billing_settings.ORGANIZATION_MODEL), ("name", "slug")))
    found = Q(pk__in=[])
    for model, candidates in models:
        names = {f.name for f in model._meta.get_fields()}
        lookups = Q()
        for field in candidates:
            if field in names:
                lookups |= Q(**{f"{field}__icontains": term})
        if not lookups:
            continue
        ids = (
            model._default_manager.filter(lookups)
            .annotate(owner_key=Cast("pk", CharField()))
            .values("owner_key")
        )
        found |= Q(
            **{
                f"{prefix}owner_type": ContentType.objects.get_for_model(model),
                f"{prefix}owner_id__in": ids,
            }
        )
    return found


@dataclass(frozen=True, slots=True)
class GrantImpact:
    """What lowering (or removing) one plan feature would do to current customers."""

    customers: int  # customers on the plan who hold the feature now
    negative: int  # of them, those whose usage already exceeds the new amount


def lower_grant_impact(plan: Any, feature_id: int, *, included: int | None) -> GrantImpact:
    """Customers of ``plan`` affected if the feature's grant becomes ``included``.

    ``included=None`` means the feature leaves the plan.
    """
    held = Entitlement.objects.filter(customer__plan=plan, feature_id=feature_id, granted=True)
    counts = held.aggregate(
        customers=Count("pk"),
        negative=Count("pk", filter=Q(usage__gt=included if included is not None else 0)),
    )
    return GrantImpact(customers=counts["customers"], negative=counts["negative"])


def history_database() -> str:
    """The database alias usage history reads use (``HISTORY_DATABASE``, else default).

    Only history and analytics read here; a replica's lag shows as history a moment
    behind, never as a wrong balance: check and track never read through it.
    """
    return billing_settings.HISTORY_DATABASE or DEFAULT_DB_ALIAS


def history_features(customer_id: int | None, feature_id: int | None = None) -> list[int]:
    """The features whose ledger ``usage_events`` reads: ``feature_id``, else all of them.

    All of them are the features of the customer's daily rollups: every ledger row adds
    itself to one (archived days keep theirs), so no event is of another feature.
    """
    if feature_id is not None:
        return [feature_id]
    if customer_id is None:
        return []
    # A loose index scan: each step is one probe of the rollup index (customer, feature,
    # day) for the next feature after the last, however many days of history there are.
    database = connections[history_database()]
    rollups = database.ops.quote_name(UsageRollup._meta.db_table)
    with database.cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE f(id) AS ("
            f"SELECT MIN(feature_id) FROM {rollups} WHERE customer_id = %s "
            f"UNION ALL SELECT (SELECT MIN(feature_id) FROM {rollups} "
            "WHERE customer_id = %s AND feature_id > f.id) FROM f WHERE f.id IS NOT NULL"
            ") SELECT id FROM f WHERE id IS NOT NULL",
            [customer_id, customer_id],
        )
        return [int(row[0]) for row in cursor.fetchall()]


def usage_events(
    customer_id: int | None,
    *,
    feature_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    features: list[int] | None = None,
) -> QuerySet[UsageEvent]:
    """A customer's ledger, newest first, filtered by feature and ``[since, until)``.

    ``features`` (from :func:`history_features`) names the features to read: then each is
    one range of the customer + feature + time index (the ledger's only one by time), and
    :func:`history_page` reads pages of them without sorting the customer's whole ledger.
    """
    if customer_id is None:
        return UsageEvent.objects.none()
    events = UsageEvent.objects.using(history_database()).filter(customer_id=customer_id)
    if feature_id is not None:
        events = events.filter(feature_id=feature_id)
    elif features is not None:
        events = events.filter(feature_id__in=features)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.select_related("feature").order_by("-created_at", "-id")


def history_page(
    events: QuerySet[UsageEvent],
    features: list[int],
    start: int,
    stop: int,
    *,
    oldest_first: bool = False,
) -> list[UsageEvent]:
    """``events[start:stop]``, newest first (``oldest_first``: oldest first).

    The ledger has no customer + time index (it cost 37 MB per million rows): with more
    than one feature, each feature's first ``stop`` events are one backwards range of the
    customer + feature + time index, stopping at ``stop``, and the page is cut from their
    ids. It reads ``features x stop`` index entries, never the customer's whole ledger.
    """
    order = ("created_at", "id") if oldest_first else ("-created_at", "-id")
    if len(features) <= 1:
        return list(events.order_by(*order)[start:stop])
    ids: list[int] = []
    for feature_id in features:
        ids += (
            events.filter(feature_id=feature_id)
            .order_by(*order)
            .values_list("id", flat=True)[:stop]
        )
    return list(events.filter(pk__in=ids).order_by(*order)[start:stop])


def daily_usage_totals(events: QuerySet[UsageEvent]) -> list[dict[str, Any]]:
    """``[{date, feature, amount, events}]`` per UTC day and feature, oldest first."""
    rows = (
        events.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "feature__key")
        .annotate(total=Sum("amount"), count=Count("id"))
        .order_by("day", "feature__key")
    )
    return [
        {
            "date": row["day"],
            "feature": row["feature__key"],
            "amount": row["total"],
            "events": row["count"],
        }
        for row in rows
    ]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def daily_usage(
    customer_id: int | None,
    *,
    feature_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """``[{date, feature, amount, events}]`` per UTC day and feature over ``[since, until)``.

    Whole days come from the daily rollups (:class:`~kernia_billing.models.UsageRollup`,
    exact: written with the ledger rows), so the cost is the number of days, not of
    events; a bound inside a day sums that part of the day from the ledger (one day of
    one customer, a range of the customer + feature + time index per feature). Archived
    days stay visible.
    """
    if customer_id is None:
        return []
    first_full = None
    if since is not None:
        first_full = since.astimezone(UTC).date()
        if since != _midnight(first_full):
            first_full += timedelta(days=1)
    end_day = until.astimezone(UTC).date() if until is not None else None
    rows: dict[tuple[date, str], dict[str, Any]] = {}
    if first_full is None or end_day is None or first_full < end_day:
        rollups = UsageRollup.objects.using(history_database()).filter(customer_id=customer_id)
        if feature_id is not None:
            rollups = rollups.filter(feature_id=feature_id)
        if first_full is not None:
            rollups = rollups.filter(day__gte=first_full)
        if end_day is not None:
            rollups = rollups.filter(day__lt=end_day)
        for day, key, amount, count in rollups.values_list(
            "day", "feature__key", "amount", "events"
        ):
            if count:
                rows[(day, key)] = {"date": day, "feature": key, "amount": amount, "events": count}
    # The partial days at either bound, from the ledger.
    edges: list[tuple[datetime, datetime]] = []
    if since is not None and first_full is not None and since != _midnight(first_full):
        edge_end = _midnight(first_full)
        edges.append((since, edge_end if until is None else min(edge_end, until)))
    if until is not None and end_day is not None and until != _midnight(end_day):
        edge_start = _midnight(end_day)
        if since is None or since <= edge_start:
            edges.append((edge_start, until))
    features = history_features(customer_id, feature_id) if edges else []
    for start, end in edges:
        events = usage_events(
            customer_id, feature_id=feature_id, since=start, until=end, features=features
        )
        for row in daily_usage_totals(events):
            rows[(row["date"], row["feature"])] = row
    return [rows[key] for key in sorted(rows)]


#: ``GET billing/usage`` counts the matching events exactly up to this many.
USAGE_COUNT_CAP = 10_000


def capped_count(events: QuerySet[UsageEvent], cap: int = USAGE_COUNT_CAP) -> tuple[int, bool]:
    """``(count, capped)``: the exact count up to ``cap``, else ``(cap, True)``.

    Counts at most ``cap + 1`` rows on the index, never the customer's whole ledger.
    """
    count = events.order_by()[: cap + 1].count()
    return (cap, True) if count > cap else (count, False)


def events_before(
    events: QuerySet[UsageEvent], at: datetime, event_id: int
) -> QuerySet[UsageEvent]:
    """Keyset page: the events after ``(at, event_id)`` in newest-first order.

    Written as ``created_at <= at AND (created_at < at OR id < event_id)`` so the first
    part is an index range on customer + feature + time and the scan stops at the page's
    limit (read with :func:`history_page`).
    """
    return events.filter(created_at__lte=at).filter(Q(created_at__lt=at) | Q(id__lt=event_id))


def events_after(events: QuerySet[UsageEvent], at: datetime, event_id: int) -> QuerySet[UsageEvent]:
    """Keyset page backwards: the events newer than ``(at, event_id)`` (see events_before)."""
    return events.filter(created_at__gte=at).filter(Q(created_at__gt=at) | Q(id__gt=event_id))


# --- pricing table (GET billing/plans) and checkout -------------------------------------


def offerable_prices() -> QuerySet[CatalogPrice]:
    """Prices a customer can buy: the pricing table shows them, checkout sells them.

    Approved (as reviewed), active and not deleted in Stripe, recurring, and mapped to
    an active plan. Prices archived or deleted in Stripe stay mapped (existing
    subscribers keep their plan) but are not offered.
    """
    return CatalogPrice.objects.filter(
        review_state=ReviewState.APPROVED,
        active=True,
        deleted_in_stripe=False,
        price_type="recurring",
        plan_mapping__plan__active=True,
    )


def pricing_plans() -> QuerySet[Any]:
    """Active plans in display order, with their :func:`offerable_prices` and features."""
    offered = (
        PlanPrice.objects.filter(price__in=offerable_prices())
        .select_related("price")
        .order_by("price__currency", "price__recurring_interval", "price__unit_amount")
    )
    features = PlanFeature.objects.filter(feature__archived=False).select_related("feature")
    return (
        Plan.objects.filter(active=True)
        .order_by("display_order", "key")
        .prefetch_related(
            Prefetch("plan_prices", queryset=offered, to_attr="offered_prices"),
            Prefetch("plan_features", queryset=features, to_attr="current_features"),
        )
    )


# --- webhook health (GET billing/webhooks/health, the admin page, the demo) --------------
#
# Read from dj-stripe's ``WebhookEventTrigger`` log. Outcomes of a delivery, as dj-stripe
# records them:
#
# - ``processed``: signature valid and every receiver succeeded (duplicates included).
# - ``failed``: a receiver (or the validation call) raised; dj-stripe answered 500 and
#   stored the exception; Stripe retries.
# - ``invalid_signature``: refused with 400; nothing processed.

WEBHOOK_HEALTH_WINDOW = timedelta(hours=24)
REFUSED_MESSAGE = "Invalid signature: refused with HTTP 400, nothing was processed."
PENDING_MESSAGE = "Valid, but not processed."


@dataclass(frozen=True, slots=True)
class WebhookFailure:
    at: datetime
    type: str
    message: str


@dataclass(frozen=True, slots=True)
class WebhookHealth:
    last_received_at: datetime | None
    window_start: datetime
    processed: int
    failed: int
    invalid_signature: int
    by_type: dict[str, int]
    last_failure: WebhookFailure | None

    @property
    def failures(self) -> int:
        """Deliveries that changed nothing: receiver failures and refused signatures."""
        return self.failed + self.invalid_signature


def _event_type(body: str) -> str:
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return "unknown"
    value = data.get("type") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else "unknown"


def webhook_health(*, now: datetime | None = None) -> WebhookHealth:
    """Counts by outcome and by event type over the last 24 hours, and the last failure."""
    now = now or timezone.now()
    since = now - WEBHOOK_HEALTH_WINDOW
    recent = WebhookEventTrigger.objects.filter(created__gte=since)
    failed_q = ~Q(exception="") | Q(valid=True, processed=False)
    invalid_q = Q(valid=False, exception="")
    counts = recent.aggregate(
        n_processed=Count("pk", filter=Q(processed=True)),
        n_failed=Count("pk", filter=failed_q & Q(processed=False)),
        n_invalid=Count("pk", filter=invalid_q & Q(processed=False)),
    )
    by_type: Counter[str] = Counter()
    # Processed deliveries have their Event row; only the rare others need the body parsed.
    for event_type, count in (
        recent.filter(processed=True, event__isnull=False)
        .values_list("event__type")
        .annotate(n=Count("pk"))
    ):
        by_type[event_type] += count
    for body in recent.exclude(processed=True, event__isnull=False).values_list("body", flat=True):
        by_type[_event_type(body)] += 1

    last = WebhookEventTrigger.objects.order_by("-created").values_list("created", flat=True)
    # A refused delivery (bad signature) is a failure too: nothing it carried was applied.
    failure = (
        WebhookEventTrigger.objects.filter(processed=False)
        .order_by("-updated", "-pk")
        .values_list("updated", "body", "exception", "valid")
        .first()
    )
    return WebhookHealth(
        last_received_at=last.first(),
        window_start=since,
        processed=counts["n_processed"],
        failed=counts["n_failed"],
        invalid_signature=counts["n_invalid"],
        by_type=dict(sorted(by_type.items())),
        last_failure=WebhookFailure(
            at=failure[0],
            type=_event_type(failure[1]),
            message=failure[2] or (REFUSED_MESSAGE if not failure[3] else PENDING_MESSAGE),
        )
        if failure
        else None,
    )
