"""grant() and revoke(): staff adjustments, promotions, clawbacks, and every source's issue step.

``grant(owner, "messages", 500, reason="outage")`` adds 500 to the balance; a negative
amount is a clawback: it takes unconsumed amount only, from the grants last in
consumption order (never-expiring first, then latest-expiring), never from the plan's
grant and never below zero. A repeated ``idempotency_key`` returns the first grant.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from ...exceptions import IdempotencyConflict, InvalidRequest, UnknownFeature
from ...hygiene import validate_text
from ...models import (
    CONSUMABLE_KINDS,
    BillingCustomer,
    Entitlement,
    Feature,
    Grant,
    GrantSource,
)
from ..customers import get_or_create_customer
from ..entitlements.rows import EntitlementRow, _load
from ..locking import atomic_with_retry
from ..usage.check import _load_or_explain
from ..usage.validation import _validate_integer, validate_idempotency_key
from .draw import lock_grants
from .totals import consumption_key, lock_entitlement, refresh_totals

GRANTABLE_KINDS = CONSUMABLE_KINDS
MAX_REASON_LENGTH = 500


def grant(
    owner: Any,
    feature: str,
    amount: int,
    *,
    expires_at: datetime | None = None,
    reason: str = "",
    idempotency_key: str | None = None,
    granted_by: Any = None,
    source: str = GrantSource.ADJUSTMENT,
    now: datetime | None = None,
    stripe: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Grant:
    """Give ``owner`` ``amount`` of ``feature`` (a clawback when negative); return the grant."""
    amount = _validate_integer(amount, "amount")
    if amount == 0:
        raise InvalidRequest("amount must not be zero.", fields={"amount": "Must not be zero."})
    validate_text(feature, "feature")
    reason = validate_text(reason or "", "reason")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(
            f"reason must be at most {MAX_REASON_LENGTH} characters.",
            fields={"reason": f"At most {MAX_REASON_LENGTH} characters."},
        )
    key = validate_idempotency_key(idempotency_key)
    if source not in GrantSource.values or source == GrantSource.PLAN:
        raise InvalidRequest(f"Unknown grant source {source!r}.", fields={"source": source})
    moment = now or timezone.now()
    if expires_at is not None and expires_at <= moment and amount > 0:
        raise InvalidRequest(
            "expiresAt must be in the future.", fields={"expiresAt": expires_at.isoformat()}
        )
    feature_row = Feature.objects.filter(key=feature).first()
    if feature_row is None:
        raise UnknownFeature(f"No such feature: {feature!r}.", fields={"feature": feature})
    if feature_row.kind not in GRANTABLE_KINDS:
        raise InvalidRequest(
            f"{feature!r} is not consumable: only metered features take grants.",
            fields={"feature": feature},
        )
    customer = owner if isinstance(owner, BillingCustomer) else get_or_create_customer(owner)
    entitlement_id = _entitlement_id(customer, feature_row)
    payload = {"feature_id": feature_row.pk, "amount": amount, "expires_at": expires_at}
    if key is not None:
        first = _replay(customer.pk, key, payload)
        if first is not None:
            return first

    def work() -> Grant:
        row = lock_entitlement(entitlement_id)
        if amount < 0:
            return _claw_back(row, -amount, reason, key, granted_by, moment)
        new = Grant(
            customer_id=customer.pk,
            feature_id=feature_row.pk,
            source=source,
            amount=amount,
            expires_at=expires_at,
            reason=reason,
            granted_by=granted_by if getattr(granted_by, "pk", None) else None,
            idempotency_key=key,
            created_at=moment,
            details=dict(details or {}),
            **_stripe_fields(stripe),
        )
        with transaction.atomic():
            new.save()
        refresh_totals(row.id, row.customer_id, row.feature_id)
        return new

    try:
        return atomic_with_retry(work)
    except IntegrityError:
        if key is None:
            raise
        first = _replay(customer.pk, key, payload)
        if first is None:
            raise
        return first


def revoke(grant_obj: Grant, *, reason: str = "", now: datetime | None = None) -> Grant:
    """Take away what is left of a grant (what was consumed stays consumed)."""
    reason = validate_text(reason or "", "reason")
    moment = now or timezone.now()
    entitlement_id = _entitlement_id(grant_obj.customer, grant_obj.feature)

    def work() -> Grant:
        row = lock_entitlement(entitlement_id)
        locked = Grant.objects.select_for_update().get(pk=grant_obj.pk)
        if locked.remaining > 0:
            if locked.expires_at is not None and locked.expires_at <= moment:
                field = "expired"  # it had already expired: record that, not a revocation
            else:
                field = "revoked"
            Grant.objects.filter(pk=locked.pk).update(**{field: F(field) + locked.remaining})
        if locked.revoked_at is None:
            details = {**locked.details, "revokeReason": reason} if reason else locked.details
            Grant.objects.filter(pk=locked.pk).update(revoked_at=moment, details=details)
        refresh_totals(row.id, row.customer_id, row.feature_id)
        return Grant.objects.get(pk=locked.pk)

    return atomic_with_retry(work)


def _claw_back(
    row: EntitlementRow,
    wanted: int,
    reason: str,
    key: str | None,
    granted_by: Any,
    moment: datetime,
) -> Grant:
    """Take up to ``wanted`` unconsumed from the grants last in consumption order."""
    grants = [
        g
        for g in lock_grants(row.customer_id, row.feature_id)
        if g.expires_at is None or g.expires_at > moment
    ]
    taken: list[dict[str, int]] = []
    need = wanted
    for g in sorted(grants, key=lambda g: consumption_key(g.id, g.expires_at), reverse=True):
        if need == 0:
            break
        take = min(g.remaining, need)
        Grant.objects.filter(pk=g.id).update(revoked=F("revoked") + take)
        taken.append({"grant": g.id, "amount": take})
        need -= take
    record = Grant(
        customer_id=row.customer_id,
        feature_id=row.feature_id,
        source=GrantSource.ADJUSTMENT,
        amount=0,
        reason=reason,
        granted_by=granted_by if getattr(granted_by, "pk", None) else None,
        idempotency_key=key,
        created_at=moment,
        details={"clawback": {"requested": wanted, "taken": wanted - need, "from": taken}},
    )
    with transaction.atomic():
        record.save()
    refresh_totals(row.id, row.customer_id, row.feature_id)
    return record


def _entitlement_id(customer: BillingCustomer, feature: Feature) -> int:
    """The (customer, feature) entitlement, created (not granted) when the plan lacks it.

    A grant of a feature the plan does not include is kept, but spendable only while a
    plan includes the feature (the answer is ``not_included`` otherwise).
    """
    row = _load(customer, feature.key)
    if row is None:
        found = _load_or_explain(customer, feature.key)
        if isinstance(found, EntitlementRow):
            return found.id
        entitlement, _created = Entitlement.objects.get_or_create(
            customer=customer, feature=feature, defaults={"granted": False}
        )
        return entitlement.pk
    return row.id


def _replay(customer_id: int, key: str, payload: dict[str, Any]) -> Grant | None:
    first = Grant.objects.filter(customer_id=customer_id, idempotency_key=key).first()
    if first is None:
        return None
    same = (
        first.feature_id == payload["feature_id"]
        and (first.amount if first.amount else -first.details["clawback"]["requested"])
        == payload["amount"]
        and first.expires_at == payload["expires_at"]
    )
    if not same:
        raise IdempotencyConflict(
            "This idempotency key was already used with a different grant.",
            fields={"idempotencyKey": key},
        )
    return first


def _stripe_fields(stripe: dict[str, str] | None) -> dict[str, str]:
    allowed = ("price", "subscription_item", "checkout_session", "invoice")
    return {f"stripe_{name}_id": (stripe or {}).get(name, "") for name in allowed}
