"""Customers change their own subscription: plans, seats, billing interval, cancel/resume.

Stripe decides, kernia applies Stripe's answer:

- **Now** (upgrades, a switch monthly <-> annual of the same plan, seat changes): the
  subscription item's price/quantity is updated with ``proration_behavior``
  (default ``always_invoice`` for upgrades and more seats: the prorated difference
  is charged at once; ``create_prorations`` for fewer seats: the credit goes on the
  next invoice). Stripe itself restarts the billing period on an interval change.
- **At the period end** (downgrades to a cheaper plan): a *subscription schedule*
  made from the subscription, with the current phase ending at the period end and a
  second phase on the new price (``end_behavior=release``). Changing plans again, or
  ``resume``, releases it: the scheduled downgrade is cancelled.
- The state Stripe answers is applied at once (``apply_subscription`` without moving
  ``stripe_state_at``), and again by the webhook that follows: whichever is second
  changes nothing. Both take the customer lock first (see :mod:`..locking`).

A downgrade to the free (default) plan is a cancellation at period end.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ...exceptions import InvalidRequest, NoSubscription, SeatsInUse
from ...models import BillingCustomer, CatalogPrice, Entitlement, Plan, PlanPrice
from ...selectors import get_customer, offerable_prices, status_entitles
from .. import stripe_gateway
from ..customers import apply_subscription
from ..metering.catalog import overage_line_items
from ..stripe_state import (
    ENDED_STATUSES,
    list_customer_subscriptions,
    pick_subscription,
    stripe_id,
    timestamp,
)

#: Metadata kernia writes on the schedules it creates (others' schedules are left alone).
SCHEDULE_KEY = "kernia_plan_change"
PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")


@dataclass(frozen=True)
class PlannedChange:
    """What a change would do, before Stripe is asked."""

    kind: str  # upgrade | downgrade | interval | seats | unchanged
    effective: str  # now | period_end
    plan: Plan
    price: CatalogPrice
    quantity: int
    current_price_id: str
    current_quantity: int
    proration_behavior: str


@dataclass(frozen=True)
class ChangeResult:
    kind: str
    effective: str
    effective_at: datetime | None
    plan: str
    price: str
    quantity: int
    subscription_id: str
    schedule_id: str | None
    invoice_id: str | None
    released_schedule: bool = False


@dataclass(frozen=True)
class Preview:
    kind: str
    effective: str
    effective_at: datetime | None
    plan: str
    plan_name: str
    price: str
    quantity: int
    currency: str
    amount_due_now: int
    amount_at_renewal: int
    lines: list[dict[str, Any]] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Context:
    customer: BillingCustomer
    subscription: dict[str, Any]
    item: dict[str, Any]
    api_key: str


# --- reading the current state ---------------------------------------------------------------


def _api_key(customer: BillingCustomer, api_key: str | None) -> str:
    livemode = customer.livemode if customer.stripe_customer_id else None
    return stripe_gateway.api_key_for(
        api_key=api_key, livemode=stripe_gateway.project_livemode(livemode)
    )


def _context(owner: Any, api_key: str | None) -> _Context:
    customer = get_customer(owner)
    if customer is None or not customer.stripe_customer_id:
        raise NoSubscription()
    key = _api_key(customer, api_key)
    subscriptions = list_customer_subscriptions(customer.stripe_customer_id, api_key=key)
    snapshot = pick_subscription(subscriptions)
    if snapshot is None or snapshot.status in ENDED_STATUSES:
        raise NoSubscription()
    data = next(s for s in subscriptions if s["id"] == snapshot.id)
    items = (data.get("items") or {}).get("data") or []
    mapped = PlanPrice.objects.filter(
        price__stripe_id__in=[stripe_id(i.get("price")) for i in items]
    ).values_list("price__stripe_id", flat=True)
    item = next((i for i in items if stripe_id(i.get("price")) in set(mapped)), None)
    if item is None or not status_entitles(snapshot.status):
        raise NoSubscription(
            "This customer's subscription is not on a plan that can be changed "
            f"(status {snapshot.status!r})."
        )
    return _Context(customer=customer, subscription=data, item=item, api_key=key)


def _seat_features(plan: Plan) -> list[int]:
    return list(
        plan.plan_features.filter(included_from_quantity=True).values_list("feature_id", flat=True)
    )


def _target_price(price: str) -> CatalogPrice:
    row = offerable_prices().filter(stripe_id=price).first()
    if row is None:
        raise InvalidRequest(
            "This price cannot be bought: it is unknown, not approved, archived, not "
            "recurring, or not mapped to an active plan.",
            fields={"price": price},
        )
    return row


def plan_change(
    owner: Any,
    *,
    price: str | None = None,
    quantity: int | None = None,
    proration_behavior: str | None = None,
    api_key: str | None = None,
) -> tuple[PlannedChange, _Context]:
    """Classify the change (no Stripe write). ``price`` defaults to the current one
    (a seat change); ``quantity`` to the current seats on the same seat plan, else 1."""
    ctx = _context(owner, api_key)
    current_price_id = stripe_id(ctx.item.get("price"))
    current_quantity = int(ctx.item.get("quantity") or 1)
    target = _target_price(price) if price else None
    if target is None:
        row = CatalogPrice.objects.filter(stripe_id=current_price_id).first()
        if row is None:
            raise InvalidRequest("Name a price.", fields={"price": "Required."})
        target = row
    plan = PlanPrice.objects.select_related("plan").get(price=target).plan
    current_plan = ctx.customer.plan
    seat_features = _seat_features(plan)
    if quantity is not None and not seat_features and quantity != 1:
        raise InvalidRequest(
            "Only seat plans take a quantity.", fields={"quantity": "Not a seat plan."}
        )
    if quantity is None:
        same_plan = current_plan is not None and current_plan.pk == plan.pk
        quantity = current_quantity if (seat_features and same_plan) else 1
    if seat_features:
        in_use = (
            Entitlement.objects.filter(customer=ctx.customer, feature_id__in=seat_features)
            .order_by("-usage")
            .values_list("usage", flat=True)
            .first()
        ) or 0
        if quantity < in_use:
            raise SeatsInUse(
                f"{in_use} seats are in use; remove seats before going down to {quantity}.",
                fields={"quantity": quantity, "seatsInUse": in_use},
            )
    current_row = CatalogPrice.objects.filter(stripe_id=current_price_id).first()
    same_plan = current_plan is not None and current_plan.pk == plan.pk
    if target.stripe_id == current_price_id and quantity == current_quantity:
        kind, effective = "unchanged", "now"
    elif target.stripe_id == current_price_id:
        kind, effective = "seats", "now"
    elif (
        same_plan
        and current_row is not None
        and (
            (current_row.recurring_interval, current_row.recurring_interval_count)
            != (target.recurring_interval, target.recurring_interval_count)
        )
    ):
        kind, effective = "interval", "now"
    elif current_plan is not None and plan.display_order < current_plan.display_order:
        kind, effective = "downgrade", "period_end"
    else:
        kind, effective = "upgrade", "now"
    if proration_behavior is not None and proration_behavior not in PRORATION_BEHAVIORS:
        raise InvalidRequest(
            "prorationBehavior must be one of create_prorations, always_invoice, none.",
            fields={"prorationBehavior": proration_behavior},
        )
    fewer_seats = kind == "seats" and quantity < current_quantity
    behavior = proration_behavior or ("create_prorations" if fewer_seats else "always_invoice")
    change = PlannedChange(
        kind=kind,
        effective=effective,
        plan=plan,
        price=target,
        quantity=quantity,
        current_price_id=current_price_id,
        current_quantity=current_quantity,
        proration_behavior=behavior,
    )
    return change, ctx


def _overage_prices(plan: Plan | None, price: CatalogPrice | None) -> set[str]:
    if plan is None or price is None:
        return set()
    return {str(i["price"]) for i in overage_line_items(plan, price)}


def _item_updates(change: PlannedChange, ctx: _Context) -> list[dict[str, Any]]:
    """The primary item gets the new price/quantity; the old plan's metered overage items
    are swapped for the new plan's (other items, e.g. add-ons, are left alone)."""
    updates: list[dict[str, Any]] = [
        {"id": ctx.item["id"], "price": change.price.stripe_id, "quantity": change.quantity}
    ]
    old_row = CatalogPrice.objects.filter(stripe_id=change.current_price_id).first()
    old_overage = _overage_prices(ctx.customer.plan, old_row)
    new_overage = _overage_prices(change.plan, change.price)
    present = set()
    for item in (ctx.subscription.get("items") or {}).get("data") or []:
        if item["id"] == ctx.item["id"]:
            continue
        pid = stripe_id(item.get("price"))
        present.add(pid)
        if pid in old_overage and pid not in new_overage:
            updates.append({"id": item["id"], "deleted": True})
    updates.extend({"price": pid} for pid in sorted(new_overage - present))
    return updates


def _phase_items(
    change: PlannedChange, ctx: _Context
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    current: list[dict[str, Any]] = []
    for i in (ctx.subscription.get("items") or {}).get("data") or []:
        recurring = (i.get("price") or {}).get("recurring") or {}
        entry: dict[str, Any] = {"price": stripe_id(i.get("price"))}
        if recurring.get("usage_type") != "metered":  # metered items take no quantity
            entry["quantity"] = int(i.get("quantity") or 1)
        current.append(entry)
    new: list[dict[str, Any]] = [{"price": change.price.stripe_id, "quantity": change.quantity}]
    new.extend({"price": pid} for pid in sorted(_overage_prices(change.plan, change.price)))
    return current, new


def _period_end(ctx: _Context) -> int:
    return int(
        ctx.item.get("current_period_end") or ctx.subscription.get("current_period_end") or 0
    )


def _idempotency_key(kind: str, ctx: _Context, *parts: Any) -> str:
    """Stable for a retry of the same change from the same Stripe state (within the hour),
    new once the subscription moved on (another item state, another latest invoice)."""
    items = sorted(
        (i["id"], stripe_id(i.get("price")), i.get("quantity"))
        for i in (ctx.subscription.get("items") or {}).get("data") or []
    )
    state = repr(
        (
            items,
            stripe_id(ctx.subscription.get("latest_invoice")),
            stripe_id(ctx.subscription.get("schedule")),
            ctx.subscription.get("cancel_at_period_end"),
            parts,
            int(time.time()) // 3600,
        )
    )
    digest = hashlib.sha256(state.encode()).hexdigest()[:32]
    return f"kernia-{kind}-{ctx.subscription['id']}-{digest}"


# --- applying Stripe's answer ----------------------------------------------------------------


def _apply(ctx: _Context, answer: dict[str, Any]) -> None:
    """Apply Stripe's answer now; the webhook re-applies the same state (a no-op)."""
    listed = list_customer_subscriptions(str(ctx.customer.stripe_customer_id), api_key=ctx.api_key)
    by_id = {s["id"]: s for s in listed}
    if answer.get("object") == "subscription":
        by_id[answer["id"]] = answer
    apply_subscription(ctx.customer, pick_subscription(by_id.values()), state_at=None)


def _our_schedule(ctx: _Context) -> dict[str, Any] | None:
    schedule_id = stripe_id(ctx.subscription.get("schedule"))
    if not schedule_id:
        return None
    schedule = stripe_gateway.retrieve("subscription_schedule", schedule_id, api_key=ctx.api_key)
    if schedule.get("status") not in ("active", "not_started"):
        return None
    return schedule


def _release_schedule(ctx: _Context) -> bool:
    schedule = _our_schedule(ctx)
    if schedule is None:
        return False
    if not (schedule.get("metadata") or {}).get(SCHEDULE_KEY):
        raise InvalidRequest(
            "This subscription follows a subscription schedule kernia did not create; "
            "change it in Stripe.",
            fields={"schedule": schedule["id"]},
        )
    stripe_gateway.release_schedule(
        schedule["id"], api_key=ctx.api_key, idempotency_key=f"kernia-release-{schedule['id']}"
    )
    ctx.subscription = stripe_gateway.retrieve(
        "subscription", ctx.subscription["id"], api_key=ctx.api_key
    )
    return True


def change_subscription(
    owner: Any,
    *,
    price: str | None = None,
    quantity: int | None = None,
    proration_behavior: str | None = None,
    api_key: str | None = None,
) -> ChangeResult:
    """Change the owner's subscription to ``price`` x ``quantity`` (see the module doc)."""
    change, ctx = plan_change(
        owner,
        price=price,
        quantity=quantity,
        proration_behavior=proration_behavior,
        api_key=api_key,
    )
    released = _release_schedule(ctx)  # a new change replaces a scheduled downgrade
    schedule_id = None
    answer: dict[str, Any] = ctx.subscription
    effective_at = None
    if change.effective == "period_end":
        schedule_id = _schedule_downgrade(change, ctx)
        effective_at = timestamp(_period_end(ctx))
    elif change.kind != "unchanged":
        if ctx.subscription.get("cancel_at_period_end"):
            extra: dict[str, Any] = {"cancel_at_period_end": False}
        else:
            extra = {}
        answer = stripe_gateway.modify(
            "subscription",
            ctx.subscription["id"],
            api_key=ctx.api_key,
            idempotency_key=_idempotency_key(
                "change", ctx, change.price.stripe_id, change.quantity, change.proration_behavior
            ),
            items=_item_updates(change, ctx),
            proration_behavior=change.proration_behavior,
            **extra,
        )
        effective_at = timestamp(int(time.time()))
    _apply(ctx, answer)
    return ChangeResult(
        kind=change.kind,
        effective=change.effective,
        effective_at=effective_at,
        plan=change.plan.key,
        price=change.price.stripe_id,
        quantity=change.quantity,
        subscription_id=str(ctx.subscription["id"]),
        schedule_id=schedule_id,
        invoice_id=stripe_id(answer.get("latest_invoice")) or None,
        released_schedule=released,
    )


def _schedule_downgrade(change: PlannedChange, ctx: _Context) -> str:
    sub_id = ctx.subscription["id"]
    schedule = stripe_gateway.create(
        "subscription_schedule",
        api_key=ctx.api_key,
        idempotency_key=_idempotency_key("schedule", ctx),
        from_subscription=sub_id,
    )
    phase = (schedule.get("phases") or [{}])[0]
    current, new = _phase_items(change, ctx)
    stripe_gateway.modify(
        "subscription_schedule",
        str(schedule["id"]),
        api_key=ctx.api_key,
        idempotency_key=_idempotency_key(
            "schedule-phases", ctx, change.price.stripe_id, change.quantity
        ),
        end_behavior="release",
        metadata={SCHEDULE_KEY: "downgrade"},
        phases=[
            {
                "items": current,
                "start_date": phase.get("start_date"),
                "end_date": phase.get("end_date") or _period_end(ctx),
            },
            {
                "items": new,
                "duration": {
                    "interval": change.price.recurring_interval,
                    "interval_count": change.price.recurring_interval_count or 1,
                },
            },
        ],
    )
    return str(schedule["id"])


# --- preview ------------------------------------------------------------------------------------


def _lines(invoice: dict[str, Any]) -> list[dict[str, Any]]:
    lines = []
    for line in (invoice.get("lines") or {}).get("data") or []:
        parent = line.get("parent") or {}
        details = parent.get("subscription_item_details") or {}
        pricing = line.get("pricing") or {}
        lines.append(
            {
                "description": line.get("description") or "",
                "amount": int(line.get("amount") or 0),
                "quantity": line.get("quantity"),
                "price": stripe_id((pricing.get("price_details") or {}).get("price")) or None,
                "proration": bool(details.get("proration")),
                "periodStart": timestamp((line.get("period") or {}).get("start")),
                "periodEnd": timestamp((line.get("period") or {}).get("end")),
            }
        )
    return lines


def _grants(change: PlannedChange) -> list[dict[str, Any]]:
    grants = []
    for pf in change.plan.plan_features.select_related("feature").order_by("feature__key"):
        grants.append(
            {
                "feature": pf.feature.key,
                "included": change.quantity if pf.included_from_quantity else pf.included,
                "unlimited": pf.unlimited,
                "resetPeriod": pf.reset_period,
            }
        )
    return grants


def preview_change(
    owner: Any,
    *,
    price: str | None = None,
    quantity: int | None = None,
    proration_behavior: str | None = None,
    api_key: str | None = None,
) -> Preview:
    """What :func:`change_subscription` would do: Stripe's invoice preview of the change
    (prorations) for what is due now, and the amount at renewal on the new price."""
    change, ctx = plan_change(
        owner,
        price=price,
        quantity=quantity,
        proration_behavior=proration_behavior,
        api_key=api_key,
    )
    due_now = 0
    lines: list[dict[str, Any]] = []
    currency = change.price.currency
    effective_at = timestamp(_period_end(ctx)) if change.effective == "period_end" else None
    if change.effective == "now" and change.kind != "unchanged":
        invoice = stripe_gateway.invoice_preview(
            api_key=ctx.api_key,
            customer=ctx.customer.stripe_customer_id,
            subscription=ctx.subscription["id"],
            subscription_details={
                "items": _item_updates(change, ctx),
                "proration_behavior": change.proration_behavior,
            },
        )
        lines = _lines(invoice)
        currency = str(invoice.get("currency") or currency)
        if change.proration_behavior == "always_invoice" or invoice.get("billing_reason") == (
            "subscription_update"
        ):
            due_now = int(invoice.get("amount_due") or 0)
        effective_at = timestamp(int(time.time()))
    renewal = int(change.price.unit_amount or 0) * change.quantity
    return Preview(
        kind=change.kind,
        effective=change.effective,
        effective_at=effective_at,
        plan=change.plan.key,
        plan_name=change.plan.name,
        price=change.price.stripe_id,
        quantity=change.quantity,
        currency=currency,
        amount_due_now=due_now,
        amount_at_renewal=renewal,
        lines=lines,
        grants=_grants(change),
    )


# --- cancel and resume -------------------------------------------------------------------------


def _live_context(owner: Any, api_key: str | None) -> _Context:
    customer = get_customer(owner)
    if customer is None or not customer.stripe_customer_id:
        raise NoSubscription()
    key = _api_key(customer, api_key)
    subscriptions = list_customer_subscriptions(customer.stripe_customer_id, api_key=key)
    snapshot = pick_subscription(subscriptions)
    if snapshot is None or snapshot.status in ENDED_STATUSES:
        raise NoSubscription()
    data = next(s for s in subscriptions if s["id"] == snapshot.id)
    items = (data.get("items") or {}).get("data") or [{}]
    return _Context(customer=customer, subscription=data, item=items[0], api_key=key)


def cancel_subscription(
    owner: Any, *, at_period_end: bool = True, api_key: str | None = None
) -> ChangeResult:
    """Cancel at the period end (default) or at once. A scheduled downgrade is released."""
    ctx = _live_context(owner, api_key)
    released = _release_schedule(ctx)
    if at_period_end:
        answer = stripe_gateway.modify(
            "subscription",
            ctx.subscription["id"],
            api_key=ctx.api_key,
            idempotency_key=_idempotency_key("cancel", ctx),
            cancel_at_period_end=True,
        )
        effective_at = timestamp(_period_end(ctx))
    else:
        answer = stripe_gateway.cancel_subscription_now(
            ctx.subscription["id"],
            api_key=ctx.api_key,
            idempotency_key=f"kernia-cancel-now-{ctx.subscription['id']}",
        )
        effective_at = timestamp(int(time.time()))
    _apply(ctx, answer)
    return _result(
        "cancel", "period_end" if at_period_end else "now", effective_at, ctx, answer, released
    )


def resume_subscription(owner: Any, *, api_key: str | None = None) -> ChangeResult:
    """Undo a cancellation at period end, and release a scheduled downgrade."""
    ctx = _live_context(owner, api_key)
    released = _release_schedule(ctx)
    answer = ctx.subscription
    if ctx.subscription.get("cancel_at_period_end") or ctx.subscription.get("cancel_at"):
        answer = stripe_gateway.modify(
            "subscription",
            ctx.subscription["id"],
            api_key=ctx.api_key,
            idempotency_key=_idempotency_key("resume", ctx),
            cancel_at_period_end=False,
        )
    _apply(ctx, answer)
    return _result("resume", "now", timestamp(int(time.time())), ctx, answer, released)


def _result(
    kind: str,
    effective: str,
    effective_at: datetime | None,
    ctx: _Context,
    answer: dict[str, Any],
    released: bool,
) -> ChangeResult:
    ctx.customer.refresh_from_db()
    return ChangeResult(
        kind=kind,
        effective=effective,
        effective_at=effective_at,
        plan=ctx.customer.plan.key if ctx.customer.plan else "",
        price=stripe_id(ctx.item.get("price")),
        quantity=int(ctx.item.get("quantity") or 1),
        subscription_id=str(ctx.subscription["id"]),
        schedule_id=None,
        invoice_id=stripe_id(answer.get("latest_invoice")) or None,
        released_schedule=released,
    )


# --- upcoming invoice ------------------------------------------------------------------------


def upcoming_invoice(owner: Any, *, api_key: str | None = None) -> dict[str, Any]:
    """Stripe's preview of the next invoice of the owner's subscription (metered lines
    priced from this period's usage)."""
    ctx = _live_context(owner, api_key)
    invoice = stripe_gateway.invoice_preview(
        api_key=ctx.api_key,
        customer=ctx.customer.stripe_customer_id,
        subscription=ctx.subscription["id"],
    )
    return {
        "subscriptionId": ctx.subscription["id"],
        "currency": invoice.get("currency"),
        "amountDue": int(invoice.get("amount_due") or 0),
        "total": int(invoice.get("total") or 0),
        "periodStart": timestamp(invoice.get("period_start")),
        "periodEnd": timestamp(invoice.get("period_end")),
        "nextPaymentAttempt": timestamp(invoice.get("next_payment_attempt")),
        "lines": _lines(invoice),
    }
