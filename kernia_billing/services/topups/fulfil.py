"""A paid top-up Checkout Session -> its grants, exactly once.

Both doors call :func:`fulfil_session`: the ``checkout.session.completed`` webhook
(through :func:`fulfil_session_id`, which re-reads the session from Stripe) and the
checkout return page. Each pack line of the session is one ``grant()`` with the
idempotency key ``topup:<session id>:<price id>``; the grant table's unique
``(customer, idempotency_key)`` makes the second door (or a replayed webhook, or two
racing requests) find the first grant instead of creating another. The expiry is
computed from the session's ``created``, so every door asks for the same grant.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ...models import BillingCustomer, Grant, GrantSource, TopUpPack
from .. import stripe_gateway
from ..grants.issue import grant
from ..stripe_state import find_customer, stripe_id, timestamp


def fulfil_session_id(session_id: str, *, api_key: str | None = None) -> list[Grant]:
    """Re-read a Checkout Session from Stripe and grant its packs if it is paid."""
    session = stripe_gateway.retrieve(
        "checkout.session", session_id, api_key=api_key, expand=["line_items"]
    )
    if not _is_paid_payment(session):
        return []
    customer = find_customer(
        stripe_id(session.get("customer")), metadata=session.get("metadata"), api_key=api_key
    )
    if customer is None:
        return []
    return fulfil_session(session, customer, api_key=api_key)


def _is_paid_payment(session: dict[str, Any]) -> bool:
    return (
        session.get("mode") == "payment"
        and session.get("status") == "complete"
        and session.get("payment_status") == "paid"
    )


def fulfil_session(
    session: dict[str, Any], customer: BillingCustomer, *, api_key: str | None = None
) -> list[Grant]:
    """Grant the packs of a paid payment-mode ``session`` to ``customer`` (idempotent)."""
    if not _is_paid_payment(session):
        return []
    lines = (session.get("line_items") or {}).get("data")
    if lines is None:
        expanded = stripe_gateway.retrieve(
            "checkout.session", str(session["id"]), api_key=api_key, expand=["line_items"]
        )
        lines = (expanded.get("line_items") or {}).get("data") or []
    bought = timestamp(session.get("created"))
    granted: list[Grant] = []
    for line in lines:
        price_id = stripe_id(line.get("price"))
        # Any pack the price sells, active or not: what was paid for is delivered.
        pack = TopUpPack.objects.filter(price__stripe_id=price_id).select_related("feature").first()
        if pack is None:
            continue
        quantity = int(line.get("quantity") or 1)
        expires_at = None
        if pack.expires_after_days and bought is not None:
            expires_at = bought + timedelta(days=pack.expires_after_days)
        granted.append(
            grant(
                customer,
                pack.feature.key,
                pack.amount * quantity,
                source=GrantSource.TOPUP,
                expires_at=expires_at,
                reason=f"Top-up {pack.name}",
                idempotency_key=f"topup:{session['id']}:{price_id}",
                stripe={"price": price_id, "checkout_session": str(session["id"])},
                details={
                    "pack": pack.key,
                    "quantity": quantity,
                    "paymentIntent": stripe_id(session.get("payment_intent")),
                },
            )
        )
    return granted
