"""check: may an owner use a feature now? Never writes usage."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from django.utils import timezone

from ...exceptions import (
    BillingError,
    InsufficientBalance,
    NoPlan,
    NotIncluded,
    UnknownFeature,
)
from ...hygiene import validate_text
from ...models import (
    CONSUMABLE_KINDS,
    Feature,
    FeatureKind,
    PlanFeature,
)
from ...selectors import status_entitles
from ...types import CheckResult
from ..customers import get_or_create_customer
from ..entitlements.rows import EntitlementRow, _load, _reload
from ..entitlements.sync import apply_default_plan, sync_entitlements
from ..grants.expiry import current
from ..grants.totals import breakdown as grant_breakdown
from ..metering.visibility import feature_overage
from ..reservations.giveback import expire_due_holds
from .pools import in_units, pool_of
from .validation import _validate_required


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
    owner: Any,
    feature: str,
    required: int = 1,
    *,
    now: datetime | None = None,
    breakdown: bool = False,
) -> CheckResult:
    """May ``owner`` use ``required`` units of ``feature`` now? Never writes usage.

    A reset that fell due is applied first (exactly once), and so are grant expiries,
    so the answer reflects the current period. ``breakdown`` adds ``grants``: the plan's
    grant and the live grants with what remains of each, in consumption order.
    """
    required = _validate_required(required)
    validate_text(feature, "feature")
    moment = now or timezone.now()
    own = _load(owner, feature)
    if own is not None:
        own = current(own, moment)
        result = _check_result(own, required, grants=_parts(own, moment, breakdown))
        if result.reason == "insufficient_balance" and expire_due_holds(own.id, moment):
            # Holds past their expiry were still in the balance: given back, ask again.
            own = _reload(own.id)
            result = _check_result(own, required, grants=_parts(own, moment, breakdown))
        if result.allowed or own.kind not in CONSUMABLE_KINDS:
            return _with_overage(result, own)
    pool = pool_of(feature)
    if pool is not None:
        # A feature's own entitlement first; the pool when it does not cover the amount.
        pooled = check(owner, pool.pool, required * pool.cost, now=moment, breakdown=breakdown)
        if pooled.reason in (None, "insufficient_balance") or own is None:
            kind = own.kind if own is not None else "metered"
            return in_units(pooled, pool, feature, kind, required)
    if own is not None:
        return _with_overage(result, own)
    found = _load_or_explain(owner, feature)
    if isinstance(found, CheckResult):
        return found
    entitlement = current(found, moment)
    result = _check_result(entitlement, required, grants=_parts(entitlement, moment, breakdown))
    return _with_overage(result, entitlement)


def _with_overage(result: CheckResult, row: EntitlementRow) -> CheckResult:
    """Metering: this period's overage, only where the feature allows overage (one query;
    the common check of a feature without overage costs nothing more)."""
    if not (row.allow_overage and row.granted and row.kind in CONSUMABLE_KINDS):
        return result
    return replace(result, overage=feature_overage(row))


def _parts(row: EntitlementRow, moment: datetime, breakdown: bool) -> tuple[Any, ...] | None:
    return grant_breakdown(row, moment) if breakdown else None


def _check_result(
    entitlement: EntitlementRow, required: int, *, grants: tuple[Any, ...] | None = None
) -> CheckResult:
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
        next_expiry=entitlement.grant_next_expiry,
        grants=grants,
    )


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
