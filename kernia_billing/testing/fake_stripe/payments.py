"""Payment methods and payment intents of the fake Stripe.

The fake has no card network: a payment method is a test card
(``pm_...``, Visa 4242) and paying with one always succeeds. Subscriptions
and invoices need one as on Stripe: without a payment method, a first
invoice stays open and the subscription ``incomplete``; a renewal fails.
"""

from __future__ import annotations

from .core import JSON, StripeError, _snapshot, generate_id, template
from .customers import CustomerStore


class PaymentStore(CustomerStore):
    """Payment methods and payment intents of the fake Stripe."""

    def create_payment_method(self, customer_id: str | None = None) -> JSON:
        """A test card, attached to ``customer_id`` if given (``payment_method.attached``)."""
        with self.lock:
            pm = template("payment_method")
            pm.update(
                id=generate_id("pm_"),
                billing_details={
                    "address": None,
                    "email": None,
                    "name": None,
                    "phone": None,
                    "tax_id": None,
                },
                created=self.now(),
                customer=None,
                livemode=False,
                metadata={},
            )
            pm["card"].update(generated_from=None, wallet=None)
            self._bucket("payment_method")[pm["id"]] = pm
            if customer_id is not None:
                self._live_customer(customer_id, "customer")
                pm["customer"] = customer_id
                self._emit("payment_method.attached", pm)
            return _snapshot(pm)

    def _default_payment_method(self, sub: JSON) -> str | None:
        """The payment method Stripe would charge for ``sub``'s invoices."""
        if sub.get("default_payment_method"):
            return str(sub["default_payment_method"])
        customer = self._bucket("customer").get(sub["customer"]) or {}
        settings = customer.get("invoice_settings") or {}
        return settings.get("default_payment_method") or customer.get("default_source") or None

    def _check_payment_method(self, pm_id: str, param: str) -> None:
        if pm_id not in self._bucket("payment_method") and not pm_id.startswith("pm_card_"):
            raise StripeError.missing("PaymentMethod", pm_id, param)

    def _new_payment_intent(self, invoice: JSON) -> JSON:
        intent = template("payment_intent")
        intent.update(
            id=generate_id("pi_"),
            amount=invoice["amount_due"],
            amount_received=0,
            automatic_payment_methods=None,
            canceled_at=None,
            client_secret=None,
            created=self.now(),
            currency=invoice["currency"],
            customer=invoice["customer"],
            description="Subscription creation"
            if invoice["billing_reason"] == "subscription_create"
            else "Subscription update",
            last_payment_error=None,
            latest_charge=None,
            managed_payments=None,
            metadata={},
            next_action=None,
            payment_method=None,
            payment_method_configuration_details=None,
            processing=None,
            setup_future_usage=None,
            shipping=None,
            status="requires_payment_method",
            transfer_data=None,
        )
        intent["client_secret"] = f"{intent['id']}_secret_{generate_id('', 24)}"
        self._bucket("payment_intent")[intent["id"]] = intent
        return intent
