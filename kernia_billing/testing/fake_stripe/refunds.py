"""Payments of payment-mode Checkout, charges and refunds of the fake Stripe.

A paid ``mode=payment`` session gets a succeeded PaymentIntent and its Charge
(``charge.succeeded``, ``payment_intent.succeeded``). ``POST /v1/refunds`` refunds a
charge in full or in part (``refund.created``, then ``charge.refunded`` with
``amount_refunded`` and ``refunded``). Refused as on Stripe: neither or both of
``charge``/``payment_intent``, an amount above what is left, a charge already refunded
in full.
"""

from __future__ import annotations

from .core import JSON, StripeError, _int, _merge_metadata, _snapshot, generate_id, template
from .subscription_items import SubscriptionItemStore

_REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def _money(amount: int, currency: str) -> str:
    return f"{currency.upper()} {amount / 100:.2f}" if currency else str(amount)


class RefundStore(SubscriptionItemStore):
    """Charges and refunds."""

    def _pay_checkout_locked(self, session: JSON, pm: str) -> str:
        amount = int(session.get("amount_total") or 0)
        currency = str(session.get("currency") or "usd")
        now = self.now()
        intent = template("payment_intent")
        intent.update(
            id=generate_id("pi_"),
            amount=amount,
            amount_received=amount,
            automatic_payment_methods=None,
            canceled_at=None,
            client_secret=None,
            created=now,
            currency=currency,
            customer=session["customer"],
            description=None,
            last_payment_error=None,
            latest_charge=None,
            metadata=dict(session.get("metadata") or {}),
            next_action=None,
            payment_method=pm,
            processing=None,
            setup_future_usage=None,
            shipping=None,
            status="succeeded",
            transfer_data=None,
        )
        intent["client_secret"] = f"{intent['id']}_secret_{generate_id('', 24)}"
        charge = template("charge")
        charge.update(
            id=generate_id("ch_"),
            amount=amount,
            amount_captured=amount,
            amount_refunded=0,
            balance_transaction=None,
            captured=True,
            created=now,
            currency=currency,
            customer=session["customer"],
            description=None,
            disputed=False,
            livemode=False,
            metadata=dict(session.get("metadata") or {}),
            paid=True,
            payment_intent=intent["id"],
            payment_method=pm,
            refunded=False,
            refunds={
                "object": "list",
                "data": [],
                "has_more": False,
                "total_count": 0,
                "url": "",
            },
            status="succeeded",
        )
        charge["refunds"]["url"] = f"/v1/charges/{charge['id']}/refunds"
        intent["latest_charge"] = charge["id"]
        self._bucket("payment_intent")[intent["id"]] = intent
        self._bucket("charge")[charge["id"]] = charge
        self._emit("charge.succeeded", charge)
        self._emit("payment_intent.succeeded", intent)
        return str(intent["id"])

    def create_refund(self, params: JSON) -> JSON:
        """POST /v1/refunds."""
        charge_id, intent_id = params.get("charge"), params.get("payment_intent")
        if charge_id and intent_id:
            raise StripeError.invalid(
                "You may only specify one of these parameters: charge, payment_intent."
            )
        if not charge_id and not intent_id:
            raise StripeError.invalid(
                "One of the following params should be provided for this request: "
                "payment_intent or charge."
            )
        reason = params.get("reason")
        if reason not in (None, "") and reason not in _REFUND_REASONS:
            raise StripeError.invalid(
                f"Invalid reason: must be one of {', '.join(_REFUND_REASONS)}", param="reason"
            )
        with self.lock:
            if intent_id:
                intent = self._get("payment_intent", str(intent_id), "payment_intent")
                if not intent.get("latest_charge"):
                    raise StripeError.invalid(
                        f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                        "refund.",
                        param="payment_intent",
                    )
                charge_id = intent["latest_charge"]
            charge = self._get("charge", str(charge_id), "charge")
            left = int(charge["amount"]) - int(charge["amount_refunded"])
            if charge["refunded"] or left <= 0:
                raise StripeError.invalid(
                    f"Charge {charge['id']} has already been refunded.",
                    code="charge_already_refunded",
                )
            amount = _int(params["amount"], "amount") if params.get("amount") else left
            if amount <= 0:
                raise StripeError.invalid("Invalid positive integer", param="amount")
            if amount > left:
                raise StripeError.invalid(
                    f"Refund amount ({_money(amount, charge['currency'])}) is greater than "
                    f"unrefunded amount on charge ({_money(left, charge['currency'])})",
                    param="amount",
                    code="amount_too_large",
                )
            refund = template("refund")
            refund.update(
                id=generate_id("re_"),
                amount=amount,
                balance_transaction=None,
                charge=charge["id"],
                created=self.now(),
                currency=charge["currency"],
                metadata=_merge_metadata({}, params.get("metadata")),
                payment_intent=charge["payment_intent"],
                reason=reason or None,
                status="succeeded",
            )
            self._bucket("refund")[refund["id"]] = refund
            previous = {
                "amount_refunded": charge["amount_refunded"],
                "refunded": charge["refunded"],
            }
            charge["amount_refunded"] = int(charge["amount_refunded"]) + amount
            charge["refunded"] = charge["amount_refunded"] >= int(charge["amount"])
            charge["refunds"]["data"].insert(0, _snapshot(refund))
            charge["refunds"]["total_count"] += 1
            self._emit("refund.created", refund)
            self._emit("charge.refunded", charge, previous)
            return _snapshot(refund)
