"""Usage corrections: staff change a period's usage, and billed overage follows exactly once.

``adjust_usage(owner, "messages", -270, reason="duplicate import")`` gives 270 units of
this period's usage back; ``adjust_usage(owner, "messages", 40, reason=...)`` records 40
units that were missed. Both are ledger rows (``UsageEvent`` with the correction's
amount, so the ledger audit's ``usage = sum of events`` holds) with a
:class:`~kernia_billing.models.UsageCorrection` record of who, why, and what happened
in Stripe.

**Adding usage** is recorded as a track would be: drawn from the plan's grant and the
grants, its overage (if any) goes to the outbox and is billed like any other, and
without overage it is refused when the balance does not cover it.

**Giving usage back** gives back this period's billed overage first (the usage a
correction removes is most often usage that should not have been billed), newest
first, then the plan's grant's usage. Units drawn from grants are not given back here
(give grant units back with ``grant()``), so at most ``usage - grant_usage`` can be
given back. For each outbox row it gives back from:

- **not sent yet** (pending, parked, unbilled): the row is dropped or its value
  reduced; Stripe never sees those units;
- **sent within Stripe's 24-hour window** (``sent_at`` less than 23 hours ago: an hour
  of margin for clocks and slow requests): the meter event is **cancelled** through a
  meter event adjustment (``type=cancel`` by its identifier; Stripe cancels whole
  events) and the units that still stand are sent again as a new event (a
  ``correction`` row with its own identifier, at the original usage time, so they
  stay in the same period). The invoice then simply has fewer units;
- **sent longer ago** (Stripe refuses to cancel it): the customer is **credited**: one
  customer balance transaction of ``-(units x unit amount of the overage price)`` per
  correction, with an idempotency key of the correction, which Stripe applies to the
  customer's next invoices. The events stay in Stripe (its meter summaries and our
  outbox keep agreeing: ``kernia_reconcile --meters`` stays clean) and the row records
  the credited units, so the overage shown to the customer and a later correction do
  not count them again. A cancel Stripe refuses for its window falls back to a credit.

Everything runs in one transaction under the entitlement's lock (the lock order of
:mod:`~kernia_billing.services.locking`, the outbox rows after it), with the Stripe
calls inside it, like the sender's: a correction Stripe cannot take (unreachable, a
refusal other than its window) rolls back whole, and staff retry. A retry after a
rollback repeats the same cancels (Stripe answers "already cancelled", taken as done)
and the same credit key (Stripe replays it), so nothing is given back twice. The
price of a credit is the customer's current plan's overage price.

``revoke`` and clawbacks of grants (:mod:`~kernia_billing.services.grants.issue`) take
only what is unconsumed, so they never change usage that was already billed: there is
nothing to cancel or credit for them; the overage they make likely later is billed by
the tracks that go beyond the smaller balance.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from ...conf import billing_settings
from ...exceptions import (
    IdempotencyConflict,
    InvalidRequest,
    StripeRefused,
    UsageBelowZero,
)
from ...hygiene import validate_text
from ...models import (
    CONSUMABLE_KINDS,
    BillingCustomer,
    Entitlement,
    OverageReport,
    PlanFeature,
    ReportKind,
    ReportStatus,
    Reservation,
    ReservationStatus,
    UsageCorrection,
    UsageEvent,
)
from ...types import CorrectionResult, Drift
from .. import stripe_gateway
from ..customers import get_or_create_customer
from ..entitlements.rows import EntitlementRow
from ..grants.expiry import current
from ..grants.totals import lock_entitlement
from ..locking import atomic_with_retry
from ..usage.check import _load_or_explain, denial_error
from ..usage.ledger import keyed_events, stored_fingerprint
from ..usage.rollups import record_rollup
from ..usage.track import track
from ..usage.validation import (
    _fingerprint,
    _validate_amount,
    same_payload,
    validate_idempotency_key,
)
from .outbox import send_on_commit_if_asked

__all__ = ["CANCEL_WINDOW", "adjust_usage", "audit_corrections"]

MAX_REASON_LENGTH = 500
#: Stripe cancels meter events received within the last 24 hours; we ask only within
#: 23, so a slow request or a skewed clock does not end in a refusal.
CANCEL_WINDOW = timedelta(hours=23)
_GIVEN_BACK_FROM = [
    ReportStatus.PENDING,
    ReportStatus.PARKED,
    ReportStatus.UNBILLED,
    ReportStatus.SENT,
]


def adjust_usage(
    owner: Any,
    feature: str,
    amount: int,
    *,
    reason: str,
    idempotency_key: str | None = None,
    adjusted_by: Any = None,
    now: datetime | None = None,
) -> CorrectionResult:
    """Correct ``owner``'s usage of ``feature`` this period by ``amount`` (negative gives
    usage back, and billed overage with it); a repeated ``idempotency_key`` answers the
    first correction (``replayed=True``)."""
    amount = _validate_amount(amount)
    validate_text(feature, "feature")
    reason = validate_text(reason or "", "reason").strip()
    if not reason:
        raise InvalidRequest(
            "A usage correction needs a reason.", fields={"reason": "This field is required."}
        )
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidRequest(
            f"reason must be at most {MAX_REASON_LENGTH} characters.",
            fields={"reason": f"At most {MAX_REASON_LENGTH} characters."},
        )
    key = validate_idempotency_key(idempotency_key)
    customer = owner if isinstance(owner, BillingCustomer) else get_or_create_customer(owner)
    properties = {"correction": {"reason": reason}}
    fingerprint = _fingerprint(feature, amount, properties)
    if key is not None:
        first = _replay(customer.pk, key, fingerprint)
        if first is not None:
            return first
    found = _load_or_explain(customer, feature)
    if not isinstance(found, EntitlementRow):
        raise denial_error(found)
    if found.kind not in CONSUMABLE_KINDS:
        raise InvalidRequest(
            f"{feature!r} is not consumable: usage corrections are for metered features "
            "(seats and quantities are set with track).",
            fields={"feature": feature},
        )
    staff = adjusted_by if getattr(adjusted_by, "pk", None) else None
    if amount > 0:
        return _add_usage(customer, found, amount, reason, key, properties, staff, now)
    moment = now or timezone.now()
    row = current(found, moment)
    try:
        return atomic_with_retry(
            lambda: _give_back(customer, row, -amount, reason, key, fingerprint, staff, moment)
        )
    except IntegrityError:
        if key is None:
            raise
        first = _replay(customer.pk, key, fingerprint)  # a concurrent twin committed first
        if first is None:
            raise
        return first


# --- adding usage ------------------------------------------------------------------------


def _add_usage(
    customer: BillingCustomer,
    row: EntitlementRow,
    amount: int,
    reason: str,
    key: str | None,
    properties: dict[str, Any],
    staff: Any,
    now: datetime | None,
) -> CorrectionResult:
    with transaction.atomic():
        tracked = track(
            customer, row.feature, amount, idempotency_key=key, properties=properties, now=now
        )
        event = UsageEvent.objects.get(pk=tracked.event_id)
        if tracked.replayed:
            return _result(UsageCorrection.objects.get(usage_event=event), event, replayed=True)
        correction = UsageCorrection.objects.create(
            customer=customer,
            feature_id=event.feature_id,
            usage_event=event,
            amount=amount,
            reason=reason,
            adjusted_by=staff,
            created_at=event.created_at,
        )
    return _result(correction, event)


# --- giving usage back -------------------------------------------------------------------


@dataclass
class _Plan:
    """What giving back does to each outbox row (worked out before any Stripe call)."""

    drop: list[tuple[OverageReport, int]] = field(default_factory=list)
    cancel: list[tuple[OverageReport, int]] = field(default_factory=list)
    credit: list[tuple[OverageReport, int]] = field(default_factory=list)

    @property
    def units(self) -> int:
        return sum(take for part in (self.drop, self.cancel, self.credit) for _, take in part)


def _give_back(
    customer: BillingCustomer,
    row: EntitlementRow,
    units: int,
    reason: str,
    key: str | None,
    fingerprint: bytes,
    staff: Any,
    moment: datetime,
) -> CorrectionResult:
    locked = lock_entitlement(row.id)
    # Open holds of this period sit in ``usage`` too (services/reservations): what the
    # plan holds for them is not given back here, or their release would go below zero.
    held = Reservation.objects.filter(
        entitlement_id=locked.id, status=ReservationStatus.OPEN, period_start=locked.period_start
    ).aggregate(plan_part=Sum(F("held") - F("from_grants")))["plan_part"]
    givable = locked.usage - locked.grant_usage - (held or 0)
    if units > givable:
        raise UsageBelowZero(
            f"At most {max(givable, 0)} units of {locked.feature!r} can be given back this "
            "period (what the plan's grant and overage covered); give grant units back "
            "with grant().",
            fields={"amount": -units, "usage": locked.usage, "givable": max(givable, 0)},
        )
    plan = _plan(locked, units, moment)
    Entitlement.objects.filter(pk=locked.id).update(usage=F("usage") - units, updated_at=moment)
    event = UsageEvent.objects.create(
        customer_id=locked.customer_id,
        feature_id=locked.feature_id,
        amount=-units,
        idempotency_key=key,
        request_fingerprint=stored_fingerprint(key, fingerprint),
        properties={"correction": {"reason": reason}},
        created_at=moment,
        balance_after=locked.balance + units,
        usage_after=locked.usage - units,
    )
    record_rollup(locked.customer_id, locked.feature_id, moment, -units)
    correction = UsageCorrection.objects.create(
        customer=customer,
        feature_id=locked.feature_id,
        usage_event=event,
        amount=-units,
        reason=reason,
        adjusted_by=staff,
        created_at=moment,
    )
    _drop(plan.drop, correction)
    credit = _cancel(plan, correction, event, moment)
    if credit:
        _credit(customer, locked, credit, correction, key)
    correction.details = {
        "reports": {
            "dropped": [r.pk for r, _ in plan.drop],
            "cancelled": [r.pk for r, _ in plan.cancel if r.status == ReportStatus.CANCELLED],
            "credited": [r.pk for r, _ in credit],
        }
    }
    correction.save()
    return _result(correction, event)


def _plan(row: EntitlementRow, units: int, moment: datetime) -> _Plan:
    """Newest billed overage first; outbox rows locked ascending id (after the entitlement)."""
    reports = OverageReport.objects.select_for_update().filter(
        customer_id=row.customer_id,
        feature_id=row.feature_id,
        status__in=_GIVEN_BACK_FROM,
        kind__in=[ReportKind.TRACK, ReportKind.CORRECTION],
    )
    if row.period_start is not None:
        reports = reports.filter(occurred_at__gte=row.period_start)
    locked = list(reports.order_by("id"))
    plan = _Plan()
    need = units
    for report in sorted(locked, key=lambda r: (r.occurred_at, r.pk), reverse=True):
        if need == 0:
            break
        standing = report.value - report.credited
        take = min(standing, need)
        if take <= 0:
            continue
        need -= take
        if report.status != ReportStatus.SENT:
            plan.drop.append((report, take))
        elif report.credited == 0 and report.sent_at and report.sent_at > moment - CANCEL_WINDOW:
            plan.cancel.append((report, take))
        else:
            plan.credit.append((report, take))
    return plan


def _drop(parts: list[tuple[OverageReport, int]], correction: UsageCorrection) -> None:
    for report, take in parts:
        if take == report.value:
            report.status = ReportStatus.CANCELLED
            report.last_error = f"Given back by usage correction {correction.pk}."
        else:
            report.value -= take
        report.save(update_fields=["status", "value", "last_error"])
        correction.unsent_units += take


def _cancel(
    plan: _Plan, correction: UsageCorrection, event: UsageEvent, moment: datetime
) -> list[tuple[OverageReport, int]]:
    """Cancel the events; returns the parts to credit instead (with the window refused)."""
    credit = list(plan.credit)
    remainders = []
    for report, take in plan.cancel:
        try:
            stripe_gateway.cancel_meter_event(
                event_name=report.event_name, identifier=report.identifier
            )
        except StripeRefused as error:
            message = str(error.message).lower()
            if "already" in message and "cancel" in message:
                pass  # a retry after a rollback: Stripe has it cancelled already
            elif "24 hours" in message or "window" in message:
                credit.append((report, take))
                continue
            else:
                raise
        report.status = ReportStatus.CANCELLED
        report.last_error = f"Cancelled in Stripe by usage correction {correction.pk}."
        report.save(update_fields=["status", "last_error"])
        correction.cancelled_units += report.value
        standing = report.value - take
        if standing > 0:
            remainders.append(
                OverageReport(
                    customer_id=report.customer_id,
                    feature_id=report.feature_id,
                    kind=ReportKind.CORRECTION,
                    value=standing,
                    occurred_at=report.occurred_at,
                    identifier=(
                        f"{billing_settings.METER_IDENTIFIER_PREFIX}-correction-"
                        f"{event.pk}-{report.pk}"
                    ),
                )
            )
            correction.resent_units += standing
    if remainders:
        OverageReport.objects.bulk_create(remainders)
        send_on_commit_if_asked()
    return credit


def _credit(
    customer: BillingCustomer,
    row: EntitlementRow,
    parts: list[tuple[OverageReport, int]],
    correction: UsageCorrection,
    key: str | None,
) -> None:
    units = sum(take for _, take in parts)
    plan_feature = (
        PlanFeature.objects.filter(plan_id=customer.plan_id, feature_id=row.feature_id)
        .select_related("overage_price")
        .first()
        if customer.plan_id is not None
        else None
    )
    price = plan_feature.overage_price if plan_feature else None
    if price is None or price.unit_amount is None or not price.currency:
        raise InvalidRequest(
            f"{units} billed overage units are past Stripe's 24-hour cancel window and must be "
            f"credited, but the plan maps no overage price with a unit amount to "
            f"{row.feature!r}; map one, or credit the customer in Stripe yourself.",
            fields={"feature": row.feature, "units": units},
        )
    stripe_customer_id = customer.stripe_customer_id or parts[0][0].stripe_customer_id
    amount = units * price.unit_amount
    prefix = billing_settings.METER_IDENTIFIER_PREFIX
    # The correction's own key when it has one: a retry after a rollback credits once.
    idempotency = f"{prefix}-correction-{customer.pk}-{key or uuid.uuid4().hex}"
    transaction_data = stripe_gateway.credit_customer_balance(
        stripe_customer_id,
        amount=amount,
        currency=price.currency,
        description=f"Usage correction: {units} {row.feature} given back ({correction.reason})",
        idempotency_key=idempotency[:255],
        metadata={"kernia_correction": str(correction.pk), "feature": row.feature},
    )
    for report, take in parts:
        OverageReport.objects.filter(pk=report.pk).update(credited=F("credited") + take)
    correction.credited_units += units
    correction.credited_amount += amount
    correction.currency = price.currency
    correction.stripe_balance_transaction_id = str(transaction_data.get("id") or "")


# --- replays, results, audit ---------------------------------------------------------------


def _replay(customer_id: int, key: str, fingerprint: bytes) -> CorrectionResult | None:
    event = keyed_events([(customer_id, key)]).first()
    if event is None:
        return None
    correction = UsageCorrection.objects.filter(usage_event=event).first()
    if correction is None or not same_payload(event.request_fingerprint, fingerprint):
        raise IdempotencyConflict(
            "This idempotency key was already used with a different payload.",
            fields={"idempotencyKey": key},
        )
    return _result(correction, event, replayed=True)


def _result(
    correction: UsageCorrection, event: UsageEvent, *, replayed: bool = False
) -> CorrectionResult:
    return CorrectionResult(
        correction_id=correction.pk,
        event_id=event.pk,
        feature=correction.feature.key,
        amount=correction.amount,
        balance=event.balance_after,
        usage=event.usage_after,
        reason=correction.reason,
        unsent_units=correction.unsent_units,
        cancelled_units=correction.cancelled_units,
        resent_units=correction.resent_units,
        credited_units=correction.credited_units,
        credited_amount=correction.credited_amount,
        currency=correction.currency,
        replayed=replayed,
        created_at=correction.created_at,
    )


def audit_corrections(customer_ids: list[int] | None = None) -> list[Drift]:
    """Every correction's ledger row carries its amount, and the units credited on the
    outbox are the units the corrections credited (reports, never fixes)."""
    corrections = UsageCorrection.objects.select_related("usage_event", "feature")
    reports = OverageReport.objects.filter(credited__gt=0)
    if customer_ids is not None:
        corrections = corrections.filter(customer_id__in=customer_ids)
        reports = reports.filter(customer_id__in=customer_ids)
    drifts = []
    credited: dict[tuple[int, int], int] = {}
    for correction in corrections.order_by("pk"):
        pair = (correction.customer_id, correction.feature_id)
        credited[pair] = credited.get(pair, 0) + correction.credited_units
        if correction.usage_event.amount != correction.amount:
            drifts.append(
                Drift(
                    "correction",
                    correction.customer_id,
                    f"{correction.feature.key} correction {correction.pk}",
                    correction.amount,
                    correction.usage_event.amount,
                )
            )
    on_reports: dict[tuple[int, int], int] = {}
    for report in reports:
        pair = (report.customer_id, report.feature_id)
        on_reports[pair] = on_reports.get(pair, 0) + report.credited
        if report.credited > report.value:
            drifts.append(
                Drift(
                    "overage", report.customer_id, report.identifier, report.value, report.credited
                )
            )
    for pair in sorted(set(credited) | set(on_reports)):
        if credited.get(pair, 0) != on_reports.get(pair, 0):
            drifts.append(
                Drift(
                    "correction",
                    pair[0],
                    f"feature {pair[1]} credited units",
                    credited.get(pair, 0),
                    on_reports.get(pair, 0),
                )
            )
    return drifts
