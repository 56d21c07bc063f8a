"""check, track and resets: the only code that writes usage.

Correctness rests on three rules:

1. Usage changes only through one conditional ``UPDATE ... RETURNING`` that
   checks the limit, the current period and the grant in its ``WHERE`` clause,
   so the database decides under its own row lock: no read-modify-write, no
   overspend, no lost update, on PostgreSQL and SQLite alike.
2. The deduction and its ledger row commit together or not at all; a repeated
   idempotency key is caught by a unique constraint and answered with the first
   result.
3. A period reset is a conditional ``UPDATE`` on the old ``next_reset_at``, so it
   happens exactly once, and a deduction only applies when ``now`` falls inside
   the entitlement's current period, so usage after the boundary counts in the
   new period and the ledger invariant (usage = sum of events since
   ``period_start``) holds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q, Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from .. import signals
from ..conf import billing_settings
from ..exceptions import (
    BillingError,
    Contention,
    IdempotencyConflict,
    InsufficientBalance,
    InvalidRequest,
    NoPlan,
    NotIncluded,
    NotTrackable,
    UnknownFeature,
    UsageBelowZero,
)
from ..hygiene import validate_properties, validate_text
from ..models import (
    BillingCustomer,
    Entitlement,
    Feature,
    FeatureKind,
    Plan,
    PlanFeature,
    UsageEvent,
)
from ..models.catalog import ResetPeriod
from ..periods import period_containing
from ..types import BatchItemResult, CheckResult, EntitlementState, TrackRequest, TrackResult
from .customers import apply_default_plan, get_or_create_customer, owner_ref, status_entitles

MAX_IDEMPOTENCY_KEY_LENGTH = 255


# --- reads -------------------------------------------------------------------------------


@dataclass(slots=True)
class EntitlementRow:
    """An entitlement as the hot path needs it: read by one SELECT, no model instances.

    Building a select_related ORM query costs more than the database round trip
    it makes (see bench/), so check and track read through :func:`_select`.
    """

    id: int
    customer_id: int
    feature_id: int
    feature: str
    kind: str
    granted: bool
    included: int
    usage: int
    unlimited: bool
    allow_overage: bool
    reset_period: str
    reset_anchor: datetime | None
    period_start: datetime | None
    next_reset_at: datetime | None
    plan_id: int | None
    plan: str | None
    customer_period_start: datetime | None
    customer_created_at: datetime
    billing_interval: str
    billing_interval_count: int
    feature_name: str

    @property
    def balance(self) -> int:
        return self.included - self.usage

    @property
    def reset_anchor_or_default(self) -> datetime:
        return self.reset_anchor or self.customer_period_start or self.customer_created_at


_DATETIME_COLUMNS = (11, 12, 13, 16, 17)
_BOOLEAN_COLUMNS = (5, 8, 9)


@lru_cache(maxsize=4)
def _select_sql(where: str) -> str:
    quote = connection.ops.quote_name
    entitlement = quote(Entitlement._meta.db_table)
    customer = quote(BillingCustomer._meta.db_table)
    feature = quote(Feature._meta.db_table)
    plan = quote(Plan._meta.db_table)
    columns = ", ".join(
        [
            "e.id, e.customer_id, e.feature_id, f.key, f.kind, e.granted, e.included",
            f"e.{quote('usage')}, e.unlimited, e.allow_overage, e.reset_period, e.reset_anchor",
            "e.period_start, e.next_reset_at, c.plan_id, p.key, c.current_period_start",
            "c.created_at, c.billing_interval, c.billing_interval_count, f.name",
        ]
    )
    return (
        f"SELECT {columns} FROM {entitlement} e "
        f"JOIN {customer} c ON c.id = e.customer_id "
        f"JOIN {feature} f ON f.id = e.feature_id "
        f"LEFT JOIN {plan} p ON p.id = c.plan_id WHERE {where}"
    )


def _select(where: str, params: list[Any]) -> EntitlementRow | None:
    rows = _select_many(where, params)
    return rows[0] if rows else None


def _select_many(where: str, params: list[Any]) -> list[EntitlementRow]:
    with connection.cursor() as cursor:
        cursor.execute(_select_sql(where), params)
        rows = cursor.fetchall()
    entitlements = []
    for row in rows:
        values = list(row)
        for index in _DATETIME_COLUMNS:
            values[index] = _aware(values[index])
        for index in _BOOLEAN_COLUMNS:
            values[index] = bool(values[index])
        entitlements.append(EntitlementRow(*values))
    return entitlements


def _aware(value: Any) -> datetime | None:
    """SQLite hands back naive UTC datetimes (or strings); PostgreSQL aware ones."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value  # type: ignore[no-any-return]


def _load(owner: Any, feature_key: str) -> EntitlementRow | None:
    """The owner's entitlement for ``feature_key`` with its feature and plan keys."""
    if isinstance(owner, BillingCustomer):
        return _select("c.id = %s AND f.key = %s", [owner.pk, feature_key])
    owner_type_id, owner_id = owner_ref(owner)
    return _select(
        "c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s",
        [owner_type_id, owner_id, feature_key],
    )


def _reload(entitlement_id: int) -> EntitlementRow:
    row = _select("e.id = %s", [entitlement_id])
    assert row is not None, "entitlements are never deleted while in use"
    return row


def _load_or_explain(owner: Any, feature_key: str) -> EntitlementRow | CheckResult:
    """The entitlement, or a denial saying why there is none (unknown feature raises)."""
    entitlement = _load(owner, feature_key)
    if entitlement is not None:
        return entitlement
    # Rare path: first use by this owner, a plan edited since the last sync, or a
    # feature the plan does not grant.
    feature = Feature.objects.filter(key=feature_key).first()
    if feature is None:
        raise UnknownFeature(f"No such feature: {feature_key!r}.", fields={"feature": feature_key})
    customer = get_or_create_customer(owner)
    if customer.plan_id is None and not status_entitles(customer.subscription_status):
        # A default plan may have appeared since this customer was created.
        apply_default_plan()
        customer.refresh_from_db()
    if (
        customer.plan_id
        and PlanFeature.objects.filter(plan_id=customer.plan_id, feature=feature).exists()
    ):
        sync_entitlements(customer)
        entitlement = _load(customer, feature_key)
        if entitlement is not None:
            return entitlement
    return CheckResult(
        allowed=False,
        feature=feature.key,
        kind=feature.kind,
        reason="no_plan" if customer.plan_id is None else "not_included",
        plan=customer.plan.key if customer.plan else None,
    )


def check(
    owner: Any, feature: str, required: int = 1, *, now: datetime | None = None
) -> CheckResult:
    """May ``owner`` use ``required`` units of ``feature`` now? Never writes usage.

    A reset that fell due is applied first (exactly once), so the answer reflects
    the current period.
    """
    required = _validate_required(required)
    validate_text(feature, "feature")
    found = _load_or_explain(owner, feature)
    if isinstance(found, CheckResult):
        return found
    entitlement = reset_if_due(found, now or timezone.now())
    return _check_result(entitlement, required)


def _check_result(entitlement: EntitlementRow, required: int) -> CheckResult:
    reason = None
    boolean = entitlement.kind == FeatureKind.BOOLEAN
    if not entitlement.granted:
        reason = "no_plan" if entitlement.plan_id is None else "not_included"
    elif not boolean and not (
        entitlement.unlimited or entitlement.allow_overage or entitlement.balance >= required
    ):
        reason = "insufficient_balance"
    return CheckResult(
        allowed=reason is None,
        feature=entitlement.feature,
        kind=entitlement.kind,
        reason=reason,
        balance=None if boolean or entitlement.unlimited else entitlement.balance,
        included=None if boolean else entitlement.included,
        usage=None if boolean else entitlement.usage,
        unlimited=entitlement.unlimited,
        allow_overage=entitlement.allow_overage,
        reset_period=entitlement.reset_period,
        next_reset_at=entitlement.next_reset_at,
        plan=entitlement.plan,
        required=required,
    )


# --- track -------------------------------------------------------------------------------


def track(
    owner: Any,
    feature: str,
    amount: int = 1,
    *,
    idempotency_key: str | None = None,
    properties: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> TrackResult:
    """Record ``amount`` of usage of ``feature`` where the product action succeeded.

    Metered amounts are positive; seats and quantities take non-zero amounts and
    never go below zero. Without overage, a track that would take the balance
    below zero raises :class:`InsufficientBalance` and records nothing. A repeated
    ``idempotency_key`` with the same payload returns the first result with
    ``replayed=True``; with another payload it raises :class:`IdempotencyConflict`.
    """
    amount = _validate_amount(amount)
    properties = validate_properties(properties)
    idempotency_key = validate_idempotency_key(idempotency_key)
    validate_text(feature, "feature")
    fingerprint = _fingerprint(feature, amount, properties)
    if now is None and not isinstance(owner, BillingCustomer):
        tracked = _track_in_one_update(
            owner, feature, amount, idempotency_key, properties, fingerprint
        )
        if tracked is not None:
            return tracked
    # Everything the one-statement path does not decide: first use, unknown or
    # boolean features, refusals, due resets, replays, an explicit clock.
    found = _load_or_explain(owner, feature)
    if isinstance(found, CheckResult):
        raise denial_error(found)
    entitlement = found
    kind = entitlement.kind
    if kind == FeatureKind.BOOLEAN:
        raise NotTrackable(fields={"feature": feature})
    if kind == FeatureKind.METERED and amount < 0:
        raise InvalidRequest(
            "Metered usage only goes up: amount must be a positive integer.",
            fields={"amount": "Must be a positive integer."},
        )
    if not entitlement.granted:
        raise denial_error(_check_result(entitlement, 1))

    if idempotency_key is not None:
        replay = _replay(entitlement.customer_id, idempotency_key, fingerprint, entitlement)
        if replay is not None:
            return replay

    fixed_now = now
    for _attempt in range(5):
        moment = fixed_now or timezone.now()
        entitlement = reset_if_due(entitlement, moment)
        try:
            with transaction.atomic():
                row = _deduct(entitlement, amount, moment)
                if row is None:
                    raise _Refused
                usage_after, included = row
                event = _record_tracked(
                    UsageEvent(
                        customer_id=entitlement.customer_id,
                        feature_id=entitlement.feature_id,
                        amount=amount,
                        idempotency_key=idempotency_key,
                        request_fingerprint=fingerprint,
                        properties=properties,
                        created_at=moment,
                        balance_after=included - usage_after,
                        usage_after=usage_after,
                    ),
                    feature=entitlement.feature,
                    unlimited=entitlement.unlimited,
                )
        except IntegrityError:
            if idempotency_key is None:
                raise
            # A concurrent request with the same key committed first.
            replay = _replay(entitlement.customer_id, idempotency_key, fingerprint, entitlement)
            if replay is None:
                raise
            return replay
        except _Refused:
            entitlement = _reload(entitlement.id)
            if not entitlement.granted:
                raise denial_error(_check_result(entitlement, 1)) from None
            if _needs_retry(entitlement, moment):
                if fixed_now is not None and _before_period(entitlement, moment):
                    raise InvalidRequest(
                        "Usage cannot be recorded before the current period started.",
                        fields={"now": moment.isoformat()},
                    ) from None
                continue
            if amount > 0:
                raise InsufficientBalance(
                    f"Balance {entitlement.balance} is less than {amount}.",
                    balance=entitlement.balance,
                    fields={"amount": amount, "balance": entitlement.balance},
                ) from None
            raise UsageBelowZero(
                f"Usage is {entitlement.usage}; removing {-amount} would go below zero.",
                fields={"amount": amount, "usage": entitlement.usage},
            ) from None
        return _track_result(entitlement.feature, entitlement.unlimited, event, replayed=False)
    raise Contention()  # pragma: no cover - five period boundaries crossed in one call


def _track_in_one_update(
    owner: Any,
    feature: str,
    amount: int,
    idempotency_key: str | None,
    properties: dict[str, Any],
    fingerprint: str,
) -> TrackResult | None:
    """The common case in two statements: find-and-deduct, then the ledger row.

    Returns None whenever the conditional UPDATE matches nothing or the key was
    used before, leaving the full path to say why (nothing was written then).
    """
    owner_type_id, owner_id = owner_ref(owner)
    moment = timezone.now()
    try:
        with transaction.atomic():
            row = _deduct_by_owner(owner_type_id, owner_id, feature, amount, moment)
            if row is None:
                return None
            customer_id, feature_id, usage_after, included, unlimited = row
            event = _record_tracked(
                UsageEvent(
                    customer_id=customer_id,
                    feature_id=feature_id,
                    amount=amount,
                    idempotency_key=idempotency_key,
                    request_fingerprint=fingerprint,
                    properties=properties,
                    created_at=moment,
                    balance_after=included - usage_after,
                    usage_after=usage_after,
                ),
                feature=feature,
                unlimited=unlimited,
            )
    except IntegrityError:
        if idempotency_key is None:
            raise
        return None  # a replay or a conflict: rolled back, answered by the full path
    return _track_result(feature, unlimited, event, replayed=False)


@lru_cache(maxsize=2)
def _deduct_by_owner_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    entitlement = quote(Entitlement._meta.db_table)
    usage = quote("usage")
    lookup = (
        f"SELECT e.id FROM {entitlement} e "
        f"JOIN {quote(BillingCustomer._meta.db_table)} c ON c.id = e.customer_id "
        f"JOIN {quote(Feature._meta.db_table)} f ON f.id = e.feature_id "
        "WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s "
        f"AND f.kind <> '{FeatureKind.BOOLEAN}' AND (%s > 0 OR f.kind <> '{FeatureKind.METERED}')"
    )
    return (
        f"UPDATE {entitlement} SET {usage} = {usage} + %s, updated_at = %s "
        f"WHERE id = ({lookup}) AND granted "
        "AND (period_start IS NULL OR period_start <= %s) "
        "AND (next_reset_at IS NULL OR next_reset_at > %s) "
        f"AND (CASE WHEN %s > 0 THEN (unlimited OR allow_overage OR {usage} + %s <= included) "
        f"ELSE {usage} + %s >= 0 END) "
        f"RETURNING customer_id, feature_id, {usage}, included, unlimited"
    )


def _deduct_by_owner(
    owner_type_id: int, owner_id: str, feature: str, amount: int, moment: datetime
) -> tuple[int, int, int, int, bool] | None:
    at = connection.ops.adapt_datetimefield_value(moment)
    params = [amount, at, owner_type_id, owner_id, feature, amount, at, at]
    params += [amount, amount, amount]
    with connection.cursor() as cursor:
        cursor.execute(_deduct_by_owner_sql(connection.vendor), params)
        row = cursor.fetchone()
    if row is None:
        return None
    customer_id, feature_id, usage_after, included, unlimited = row
    return int(customer_id), int(feature_id), int(usage_after), int(included), bool(unlimited)


class _Refused(Exception):
    """The conditional UPDATE matched no row."""


def _needs_retry(entitlement: EntitlementRow, moment: datetime) -> bool:
    """Refused only because a period boundary moved under us: reset/refresh and retry."""
    if entitlement.next_reset_at is not None and moment >= entitlement.next_reset_at:
        return True
    return _before_period(entitlement, moment)


def _before_period(entitlement: EntitlementRow, moment: datetime) -> bool:
    return entitlement.period_start is not None and moment < entitlement.period_start


def _deduct(entitlement: EntitlementRow, amount: int, moment: datetime) -> tuple[int, int] | None:
    """``UPDATE ... SET usage = usage + amount WHERE <allowed> RETURNING usage, included``.

    The database evaluates the limit under the row lock it takes for the update,
    so concurrent tracks can never overspend or lose an update.
    """
    quote = connection.ops.quote_name
    at = connection.ops.adapt_datetimefield_value(moment)
    usage = quote("usage")
    if amount > 0:
        limit = f"({quote('unlimited')} OR {quote('allow_overage')} OR {usage} + %s <= "
        limit += f"{quote('included')})"
    else:
        limit = f"{usage} + %s >= 0"
    sql = (
        f"UPDATE {quote(Entitlement._meta.db_table)} "
        f"SET {usage} = {usage} + %s, {quote('updated_at')} = %s "
        f"WHERE {quote('id')} = %s AND {quote('granted')} "
        f"AND ({quote('period_start')} IS NULL OR {quote('period_start')} <= %s) "
        f"AND ({quote('next_reset_at')} IS NULL OR {quote('next_reset_at')} > %s) "
        f"AND {limit} "
        f"RETURNING {usage}, {quote('included')}"
    )
    now_value = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [amount, now_value, entitlement.id, at, at, amount])
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else None


_EVENT_COLUMNS = (
    "customer_id",
    "feature_id",
    "amount",
    "idempotency_key",
    "request_fingerprint",
    "properties",
    "created_at",
    "balance_after",
    "usage_after",
)


@lru_cache(maxsize=2)
def _insert_event_sql(vendor: str) -> str:
    quote = connection.ops.quote_name
    columns = ", ".join(quote(c) for c in _EVENT_COLUMNS)
    placeholders = ", ".join(["%s"] * len(_EVENT_COLUMNS))
    return (
        f"INSERT INTO {quote(UsageEvent._meta.db_table)} ({columns}) "
        f"VALUES ({placeholders}) RETURNING {quote('id')}"
    )


@lru_cache(maxsize=1)
def _event_fields() -> tuple[models.Field[Any, Any], ...]:
    fields = (UsageEvent._meta.get_field(name) for name in _EVENT_COLUMNS)
    return tuple(field for field in fields if isinstance(field, models.Field))


def _record_event(event: UsageEvent) -> UsageEvent:
    """``INSERT ... RETURNING id`` of the ledger row; the ORM's save() costs more here."""
    params = [
        field.get_db_prep_save(getattr(event, field.attname), connection)
        for field in _event_fields()
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_event_sql(connection.vendor), params)
        event.pk = cursor.fetchone()[0]
    return event


def _replay(
    customer_id: int, key: str, fingerprint: str, entitlement: EntitlementRow
) -> TrackResult | None:
    event = UsageEvent.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if event is None:
        return None
    if event.request_fingerprint != fingerprint:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    return _track_result(entitlement.feature, entitlement.unlimited, event, replayed=True)


def _track_result(
    feature: str, unlimited: bool, event: UsageEvent, *, replayed: bool
) -> TrackResult:
    return TrackResult(
        event_id=event.pk,
        feature=feature,
        amount=event.amount,
        balance=event.balance_after,
        usage=event.usage_after,
        included=event.balance_after + event.usage_after,
        unlimited=unlimited,
        replayed=replayed,
        created_at=event.created_at,
    )


def _record_tracked(event: UsageEvent, *, feature: str, unlimited: bool) -> UsageEvent:
    """Insert the ledger row of an accepted deduction and queue its signals."""
    _record_event(event)
    _notify_tracked(event.customer_id, feature, unlimited, event)
    return event


def _notify_tracked(customer_id: int, feature: str, unlimited: bool, event: UsageEvent) -> None:
    balance_before = event.balance_after + event.amount
    limit_reached = not unlimited and balance_before > 0 >= event.balance_after
    if not (signals.usage_tracked.has_listeners() or signals.limit_reached.has_listeners()):
        return  # the hot path pays nothing for signals nobody listens to

    def send() -> None:
        customer = BillingCustomer.objects.get(pk=customer_id)
        signals.usage_tracked.send(
            sender=UsageEvent,
            customer=customer,
            feature=feature,
            event_id=event.pk,
            amount=event.amount,
            balance=event.balance_after,
            usage=event.usage_after,
        )
        if limit_reached:
            signals.limit_reached.send(
                sender=UsageEvent,
                customer=customer,
                feature=feature,
                balance=event.balance_after,
            )

    transaction.on_commit(send)


def denial_error(result: CheckResult) -> BillingError:
    """The domain error (402) that says why a check was denied; every door raises this."""
    fields: dict[str, Any] = {"feature": result.feature}
    if result.reason == "no_plan":
        return NoPlan(fields=fields)
    if result.reason == "insufficient_balance":
        fields.update(balance=result.balance, required=result.required)
        return InsufficientBalance(
            f"Not enough {result.feature!r} left: balance {result.balance}, "
            f"required {result.required}.",
            balance=result.balance,
            fields=fields,
        )
    return NotIncluded(f"The plan does not include {result.feature!r}.", fields=fields)


# --- input validation (every door shares it) ---------------------------------------------


def _validate_integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer.", fields={name: "Must be an integer."})
    limit = billing_settings.MAX_TRACK_AMOUNT
    if abs(value) > limit:
        raise InvalidRequest(
            f"{name} must be at most {limit} in size.", fields={name: f"At most {limit}."}
        )
    return value


def _validate_amount(amount: Any) -> int:
    amount = _validate_integer(amount, "amount")
    if amount == 0:
        raise InvalidRequest("amount must not be zero.", fields={"amount": "Must not be zero."})
    return amount


def _validate_required(required: Any) -> int:
    required = _validate_integer(required, "required")
    if required < 0:
        raise InvalidRequest(
            "required must be zero or more.", fields={"required": "Must be zero or more."}
        )
    return required


def validate_idempotency_key(key: Any, *, field: str = "idempotencyKey") -> str | None:
    """A usable idempotency key, or None for none; ``field`` names it in errors."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise InvalidRequest(f"{field} must be a string.", fields={field: "Must be a string."})
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(
            f"{field} must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
            fields={field: f"At most {MAX_IDEMPOTENCY_KEY_LENGTH} characters."},
        )
    validate_text(key, field)
    return key


def _fingerprint(feature: str, amount: int, properties: dict[str, Any]) -> str:
    payload = json.dumps([feature, amount, properties], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


# --- periods and resets ------------------------------------------------------------------


def _reset_unit(entitlement_reset: str, customer: BillingCustomer) -> tuple[str, int]:
    if entitlement_reset == ResetPeriod.BILLING:
        return customer.billing_interval or "month", customer.billing_interval_count or 1
    return entitlement_reset, 1


def _anchor(customer: BillingCustomer) -> datetime:
    return customer.current_period_start or customer.created_at


def current_period(
    reset_period: str, customer: BillingCustomer, now: datetime
) -> tuple[datetime | None, datetime | None, datetime | None]:
    """``(anchor, period_start, next_reset_at)`` of a reset period for this customer now."""
    if reset_period == ResetPeriod.NONE:
        return None, None, None
    if (
        reset_period == ResetPeriod.BILLING
        and customer.current_period_start
        and customer.current_period_end
        and customer.current_period_start <= now < customer.current_period_end
    ):
        return (
            customer.current_period_start,
            customer.current_period_start,
            customer.current_period_end,
        )
    anchor = _anchor(customer)
    unit, count = _reset_unit(reset_period, customer)
    start, end = period_containing(anchor, unit, now, count)
    return anchor, start, end


def reset_if_due(entitlement: EntitlementRow, now: datetime) -> EntitlementRow:
    """Apply a reset that fell due, exactly once under concurrency; return fresh state."""
    if entitlement.next_reset_at is None or now < entitlement.next_reset_at:
        return entitlement
    if entitlement.reset_period == ResetPeriod.BILLING:
        unit = entitlement.billing_interval or "month"
        count = entitlement.billing_interval_count or 1
    else:
        unit, count = entitlement.reset_period, 1
    start, end = period_containing(entitlement.reset_anchor_or_default, unit, now, count)
    # Only the first of any number of concurrent resets matches the old boundary.
    Entitlement.objects.filter(pk=entitlement.id, next_reset_at=entitlement.next_reset_at).update(
        usage=0, period_start=start, next_reset_at=end, updated_at=timezone.now()
    )
    return _reload(entitlement.id)


def reset_for_new_period(customer: BillingCustomer, period_start: datetime) -> int:
    """A new Stripe billing period began: reset ``billing`` entitlements once.

    Usage is recomputed from the ledger since ``period_start`` rather than set to
    zero, so usage tracked after the boundary but before the webhook arrived
    stays counted in the new period. The rows are locked before the ledger is
    summed, so a track committing meanwhile is counted, not overwritten. Must run
    inside a transaction. Returns how many entitlements reset.
    """
    due = (
        Entitlement.objects.filter(customer=customer, reset_period=ResetPeriod.BILLING)
        .filter(Q(period_start__isnull=True) | Q(period_start__lt=period_start))
        .order_by("pk")
        .select_for_update()
    )
    count = 0
    for entitlement_id, feature_id in list(due.values_list("pk", "feature_id")):
        usage = (
            UsageEvent.objects.filter(
                customer=customer, feature_id=feature_id, created_at__gte=period_start
            ).aggregate(total=Sum("amount"))["total"]
            or 0
        )
        count += Entitlement.objects.filter(pk=entitlement_id).update(
            usage=usage,
            period_start=period_start,
            reset_anchor=period_start,
            next_reset_at=customer.current_period_end,
            updated_at=timezone.now(),
        )
    return count


def reanchor_entitlements(customer: BillingCustomer, *, now: datetime | None = None) -> int:
    """Anchor resets at the customer's current subscription period (else its creation).

    Called when the subscription period changes. A reset already due under the old
    anchor happens first; then the current period runs until the next boundary of
    the new anchor. ``period_start`` and usage are kept, so subscribing mid-period
    keeps usage (SPEC: upgrade 100 -> 1000 with 80 used leaves 920) and the ledger
    invariant holds. Must run inside a transaction. Returns how many rows changed.
    """
    now = now or timezone.now()
    rows = (
        Entitlement.objects.filter(customer=customer)
        .exclude(reset_period=ResetPeriod.NONE)
        .order_by("pk")
        .select_for_update()
    )
    changed = 0
    for entitlement in rows:
        if entitlement.next_reset_at is not None and now >= entitlement.next_reset_at:
            reset_if_due(_reload(entitlement.pk), now)
            entitlement.refresh_from_db()
        anchor, start, end = current_period(entitlement.reset_period, customer, now)
        if (anchor, end) == (entitlement.reset_anchor, entitlement.next_reset_at):
            continue
        changed += Entitlement.objects.filter(pk=entitlement.pk).update(
            reset_anchor=anchor,
            period_start=entitlement.period_start or start,
            next_reset_at=end,
            updated_at=now,
        )
    return changed


# --- plan -> entitlements ----------------------------------------------------------------


def sync_entitlements(customer: BillingCustomer, *, now: datetime | None = None) -> list[str]:
    """Make the customer's entitlements follow its plan's plan features.

    Usage in the current period is kept (an upgrade from 100 to 1000 with 80
    used leaves 920); features the plan no longer grants are kept with
    ``granted=False`` so a re-upgrade in the same period finds its usage.
    Idempotent: nothing is written when nothing changed. Returns changed keys.
    """
    now = now or timezone.now()
    plan_features = (
        list(PlanFeature.objects.filter(plan_id=customer.plan_id).select_related("feature"))
        if customer.plan_id
        else []
    )
    existing = {e.feature_id: e for e in Entitlement.objects.filter(customer=customer)}
    changed: list[str] = []
    for plan_feature in plan_features:
        included = plan_feature.included
        if plan_feature.included_from_quantity and customer.seat_quantity is not None:
            included = customer.seat_quantity
        wanted = {
            "granted": True,
            "included": included,
            "unlimited": plan_feature.unlimited,
            "allow_overage": plan_feature.allow_overage,
            "reset_period": plan_feature.reset_period,
        }
        current = existing.get(plan_feature.feature_id)
        if current is None:
            anchor, start, end = current_period(plan_feature.reset_period, customer, now)
            try:
                with transaction.atomic():
                    Entitlement.objects.create(
                        customer=customer,
                        feature_id=plan_feature.feature_id,
                        reset_anchor=anchor,
                        period_start=start,
                        next_reset_at=end,
                        **wanted,
                    )
            except IntegrityError:
                continue  # created concurrently by another sync of the same plan
            changed.append(plan_feature.feature.key)
            continue
        updates = {k: v for k, v in wanted.items() if getattr(current, k) != v}
        if current.reset_period != plan_feature.reset_period or (
            plan_feature.reset_period != ResetPeriod.NONE and current.period_start is None
        ):
            anchor, start, end = current_period(plan_feature.reset_period, customer, now)
            updates.update(reset_anchor=anchor, period_start=start, next_reset_at=end)
        if updates:
            # update(), never save(): usage is not ours to overwrite here.
            Entitlement.objects.filter(pk=current.pk).update(**updates, updated_at=now)
            changed.append(plan_feature.feature.key)
    granted_ids = {pf.feature_id for pf in plan_features}
    revoked = [e for fid, e in existing.items() if fid not in granted_ids and e.granted]
    if revoked:
        Entitlement.objects.filter(pk__in=[e.pk for e in revoked]).update(
            granted=False, updated_at=now
        )
        changed.extend(e.feature.key for e in revoked)
    if changed:
        transaction.on_commit(
            lambda: signals.entitlement_changed.send(
                sender=Entitlement, customer=customer, features=tuple(changed)
            )
        )
    return changed


def sync_plan_customers(plan_ids: Iterable[int]) -> int:
    """After plans were edited: re-sync their customers' entitlements, and move customers
    without an entitling subscription onto the (possibly new) default plan."""
    from .customers import apply_default_plan

    count = 0
    for customer in BillingCustomer.objects.filter(plan_id__in=list(plan_ids)):
        sync_entitlements(customer)
        count += 1
    return count + apply_default_plan()


def refresh_entitlements(
    customer: BillingCustomer, *, now: datetime | None = None
) -> list[EntitlementState]:
    """The customer's granted entitlements, with due resets applied."""
    now = now or timezone.now()
    states = []
    rows = _select_many("c.id = %s AND e.granted = %s", [customer.pk, True])
    for row in sorted(rows, key=lambda r: r.feature):
        entitlement = reset_if_due(row, now)
        states.append(
            EntitlementState(
                feature=entitlement.feature,
                name=entitlement.feature_name,
                kind=entitlement.kind,
                granted=entitlement.granted,
                included=entitlement.included,
                usage=entitlement.usage,
                balance=entitlement.balance,
                unlimited=entitlement.unlimited,
                allow_overage=entitlement.allow_overage,
                reset_period=entitlement.reset_period,
                period_start=entitlement.period_start,
                next_reset_at=entitlement.next_reset_at,
            )
        )
    return states


# --- batch track -------------------------------------------------------------------------


def track_batch(
    owner: Any,
    events: list[TrackRequest],
    *,
    now: datetime | None = None,
) -> list[BatchItemResult]:
    """Track many events at once; each is answered on its own, as :func:`track` would.

    Each event is exact and idempotent as in single track, but the whole batch
    costs a handful of statements: the entitlement rows involved are locked in
    id order (``SELECT ... FOR UPDATE``; SQLite serializes writers anyway), every
    event is decided in order against the locked balances, then one ``UPDATE``
    per entitlement and one bulk ``INSERT`` record what was accepted. An event's
    ``owner`` (staff callers) overrides ``owner``.
    """
    limit = billing_settings.MAX_BATCH_SIZE
    if len(events) > limit:
        raise InvalidRequest(
            f"A batch holds at most {limit} events.", fields={"events": f"At most {limit}."}
        )
    results: list[BatchItemResult | None] = [None] * len(events)
    prepared: list[_Prepared] = []
    rows_by_key: dict[tuple[Any, str], EntitlementRow] = {}
    for index, request in enumerate(events):
        try:
            prepared.append(_prepare(index, request, owner, rows_by_key))
        except BillingError as error:
            results[index] = refusal(index, error)
    for _attempt in range(3):
        known_keys: set[tuple[int, str]] = set()
        try:
            with transaction.atomic():
                decided = _decide_locked(prepared, now, known_keys)
            break
        except IntegrityError:
            # Only a concurrent request committing one of our idempotency keys is worth
            # another try (which then answers that event as a replay); anything else
            # is a real integrity error and goes up as one.
            if set(_existing_events(prepared)) == known_keys:
                raise
    else:  # pragma: no cover - needs three concurrent collisions in a row
        raise Contention("The batch kept colliding with concurrent requests; retry it.")
    for index, item in decided.items():
        results[index] = item
    return [r for r in results if r is not None]


@dataclass(slots=True)
class _Prepared:
    index: int
    entitlement_id: int
    customer_id: int
    feature: str
    amount: int
    idempotency_key: str | None
    properties: dict[str, Any]
    fingerprint: str


def _prepare(
    index: int,
    request: TrackRequest,
    default_owner: Any,
    rows_by_key: dict[tuple[Any, str], EntitlementRow],
) -> _Prepared:
    """Validate one event and find its entitlement (outside the transaction)."""
    owner = request.owner if request.owner is not None else default_owner
    amount = _validate_amount(request.amount)
    properties = validate_properties(request.properties)
    key = validate_idempotency_key(request.idempotency_key)
    validate_text(request.feature, "feature")
    cache_key = (owner_ref(owner), request.feature)
    row = rows_by_key.get(cache_key)
    if row is None:
        found = _load_or_explain(owner, request.feature)
        if isinstance(found, CheckResult):
            raise denial_error(found)
        row = rows_by_key[cache_key] = found
    if row.kind == FeatureKind.BOOLEAN:
        raise NotTrackable(fields={"feature": request.feature})
    if row.kind == FeatureKind.METERED and amount < 0:
        raise InvalidRequest(
            "Metered usage only goes up: amount must be a positive integer.",
            fields={"amount": "Must be a positive integer."},
        )
    return _Prepared(
        index=index,
        entitlement_id=row.id,
        customer_id=row.customer_id,
        feature=row.feature,
        amount=amount,
        idempotency_key=key,
        properties=properties,
        fingerprint=_fingerprint(row.feature, amount, properties),
    )


def _decide_locked(
    prepared: list[_Prepared], now: datetime | None, known_keys: set[tuple[int, str]]
) -> dict[int, BatchItemResult]:
    """Inside one transaction: lock, decide every event in order, write once per row.

    The moment (``now``, else the time) is read once the rows are locked: a reset that
    committed while this batch waited for them started a period that the moment is in,
    not one after it. Events whose entitlement's period starts after the moment are
    refused, as single track refuses them: counted there, they would be usage of a
    period they were not recorded in. ``known_keys`` receives the idempotency keys
    that already had a ledger row.
    """
    if not prepared:
        return {}
    ids = sorted({p.entitlement_id for p in prepared})
    lock = " ORDER BY e.id"
    if connection.features.has_select_for_update_of:
        lock += " FOR UPDATE OF e"
    placeholders = ", ".join(["%s"] * len(ids))
    rows = {r.id: r for r in _select_many(f"e.id IN ({placeholders}){lock}", ids)}
    moment = now or timezone.now()
    for row_id, row in list(rows.items()):
        rows[row_id] = _reset_locked(row, moment)
    before_period = {row_id for row_id, row in rows.items() if _before_period(row, moment)}
    existing = _existing_events(prepared)
    known_keys.update(existing)
    decided: dict[int, BatchItemResult] = {}
    accepted: list[tuple[_Prepared, UsageEvent]] = []
    in_batch_replays: list[tuple[_Prepared, UsageEvent]] = []
    # Keys used earlier in this batch: (fingerprint, accepted event or None if refused).
    seen_keys: dict[tuple[int, str], tuple[str, UsageEvent | None]] = {}
    usage = {row_id: row.usage for row_id, row in rows.items()}
    for item in prepared:
        row = rows[item.entitlement_id]
        if row.id in before_period:
            decided[item.index] = refusal(item.index, _before_period_error(now, moment))
            continue
        key = (item.customer_id, item.idempotency_key) if item.idempotency_key else None
        if key is not None:
            first = existing.get(key)
            if first is not None:
                decided[item.index] = _replayed(item, row, first)
                continue
            fingerprint, event = seen_keys.get(key, (item.fingerprint, None))
            if fingerprint != item.fingerprint:
                decided[item.index] = refusal(item.index, IdempotencyConflict())
                continue
            if event is not None:  # answered once the event has its id, below
                in_batch_replays.append((item, event))
                continue
        # A first use, or a retry of a use that this batch refused: decide it.
        result = _decide_one(item, row, usage, moment, accepted)
        decided[item.index] = result
        if key is not None:
            seen_keys[key] = (item.fingerprint, accepted[-1][1] if result.ok else None)
    _write_decisions(rows, usage, accepted, moment)
    for item, event in accepted:
        decided[item.index] = BatchItemResult(
            index=item.index,
            ok=True,
            result=_track_result(
                item.feature, rows[item.entitlement_id].unlimited, event, replayed=False
            ),
            status=201,
        )
    for item, event in in_batch_replays:
        decided[item.index] = _replayed(item, rows[item.entitlement_id], event)
    return decided


def _before_period_error(now: datetime | None, moment: datetime) -> BillingError:
    """What single track answers for a moment before the current period."""
    if now is not None:
        return InvalidRequest(
            "Usage cannot be recorded before the current period started.",
            fields={"now": moment.isoformat()},
        )
    # The period starts after the server's clock (Stripe's clock is ahead): retry later.
    return Contention("The current period has not started yet; retry the event.")


def _reset_locked(row: EntitlementRow, moment: datetime) -> EntitlementRow:
    """Apply a due reset to a row this transaction holds locked."""
    if row.next_reset_at is None or moment < row.next_reset_at:
        return row
    return reset_if_due(row, moment)


def _existing_events(prepared: list[_Prepared]) -> dict[tuple[int, str], UsageEvent]:
    keyed = [(p.customer_id, p.idempotency_key) for p in prepared if p.idempotency_key]
    if not keyed:
        return {}
    # One IN list per customer: an OR per key would nest 1,000 deep, which SQLite
    # refuses ("Expression tree is too large") and PostgreSQL plans slowly.
    keys_by_customer: dict[int, set[str]] = {}
    for customer_id, key in keyed:
        keys_by_customer.setdefault(customer_id, set()).add(key)
    query = Q()
    for customer_id, keys in keys_by_customer.items():
        query |= Q(customer_id=customer_id, idempotency_key__in=sorted(keys))
    return {
        (event.customer_id, event.idempotency_key or ""): event
        for event in UsageEvent.objects.filter(query)
    }


def _decide_one(
    item: _Prepared,
    row: EntitlementRow,
    usage: dict[int, int],
    moment: datetime,
    accepted: list[tuple[_Prepared, UsageEvent]],
) -> BatchItemResult:
    current = usage[row.id]
    after = current + item.amount
    if not row.granted:
        return refusal(item.index, denial_error(_check_result(row, 1)))
    if item.amount > 0 and not (row.unlimited or row.allow_overage) and after > row.included:
        balance = row.included - current
        return refusal(
            item.index,
            InsufficientBalance(
                f"Balance {balance} is less than {item.amount}.",
                balance=balance,
                fields={"amount": item.amount, "balance": balance},
            ),
        )
    if after < 0:
        return refusal(
            item.index,
            UsageBelowZero(
                f"Usage is {current}; removing {-item.amount} would go below zero.",
                fields={"amount": item.amount, "usage": current},
            ),
        )
    usage[row.id] = after
    event = UsageEvent(
        customer_id=item.customer_id,
        feature_id=row.feature_id,
        amount=item.amount,
        idempotency_key=item.idempotency_key,
        request_fingerprint=item.fingerprint,
        properties=item.properties,
        created_at=moment,
        balance_after=row.included - after,
        usage_after=after,
    )
    accepted.append((item, event))
    return BatchItemResult(index=item.index, ok=True, status=201)


def _write_decisions(
    rows: dict[int, EntitlementRow],
    usage: dict[int, int],
    accepted: list[tuple[_Prepared, UsageEvent]],
    moment: datetime,
) -> None:
    changed = {row_id for row_id, value in usage.items() if value != rows[row_id].usage}
    for row_id in sorted(changed):
        # Absolute values are safe: this transaction holds the row locked.
        Entitlement.objects.filter(pk=row_id).update(usage=usage[row_id], updated_at=moment)
    if accepted:
        UsageEvent.objects.bulk_create([event for _, event in accepted], batch_size=500)


def _replayed(item: _Prepared, row: EntitlementRow, event: UsageEvent) -> BatchItemResult:
    if event.request_fingerprint != item.fingerprint:
        return refusal(
            item.index, IdempotencyConflict(fields={"idempotencyKey": event.idempotency_key})
        )
    return BatchItemResult(
        index=item.index,
        ok=True,
        result=_track_result(row.feature, row.unlimited, event, replayed=True),
        status=201,
    )


def refusal(index: int, error: BillingError) -> BatchItemResult:
    """A batch event answered with ``error``, as single track would raise it."""
    return BatchItemResult(
        index=index,
        ok=False,
        error_code=error.code,
        error_message=error.message,
        error_fields=error.fields,
        status=error.status,
    )
