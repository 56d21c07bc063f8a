"""``charge.refunded``: a full refund revokes what is left of the packs it paid for.

Policy: what was consumed stays consumed (a partly used pack is revoked down to its
consumption, never below; usage never goes negative). A partial refund changes no
balance: how much of a pack a partial refund should take back is a business decision
(staff take it with a clawback, ``kernia_billing.grant(owner, feature, -n)``).
"""

from __future__ import annotations

from ...models import Grant, GrantSource
from .. import stripe_gateway
from ..grants.issue import revoke


def apply_charge_refund(charge_id: str, *, api_key: str | None = None) -> list[Grant]:
    """Re-read ``charge_id`` from Stripe; when refunded in full, revoke its top-ups."""
    charge = stripe_gateway.retrieve("charge", charge_id, api_key=api_key)
    intent = charge.get("payment_intent")
    intent_id = str(intent.get("id") if isinstance(intent, dict) else intent or "")
    if not intent_id or not charge.get("refunded"):
        return []
    grants = Grant.objects.filter(
        source=GrantSource.TOPUP, details__paymentIntent=intent_id
    ).select_related("customer", "feature")
    return [
        revoke(g, reason=f"Refunded ({charge_id})") if g.revoked_at is None else g
        for g in grants.order_by("pk")
    ]
