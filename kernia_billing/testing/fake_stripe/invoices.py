"""Invoices (and their payment intents) of the fake Stripe."""

from __future__ import annotations

import copy

from .core import (
    JSON,
    StripeError,
    _diff,
    _snapshot,
    generate_id,
    template,
)
from .payments import PaymentStore


class InvoiceStore(PaymentStore):
    """Invoices of subscriptions, finalized at once, paid with a payment method."""

    def _create_invoice_locked(
        self, sub: JSON, billing_reason: str, *, period_lines: bool = True
    ) -> JSON:
        """A finalized, open invoice for ``sub``'s current period (``period_lines=False``:
        its pending invoice items only, as for prorations invoiced at once).

        Emits ``invoice.created`` and ``invoice.finalized``; settle it with
        :meth:`_settle_invoice_locked`.
        """
        paid = False
        customer = self._bucket("customer").get(sub["customer"], {})
        invoice = template("invoice")
        line_template = invoice["lines"]["data"][0]
        invoice_id = generate_id("in_")
        lines = []
        trialing = sub["status"] == "trialing"
        for item in sub["items"]["data"] if period_lines else []:
            unit = 0 if trialing else int(item["price"]["unit_amount"] or 0)
            quantity = int(item["quantity"] or 1)
            period = {"start": item["current_period_start"], "end": item["current_period_end"]}
            metered = (item["price"].get("recurring") or {}).get("usage_type") == "metered"
            if metered:  # billed in arrears: the usage of the period that just ended
                quantity, period = self._metered_usage_locked(sub, item)
            amount = unit * quantity
            line = copy.deepcopy(line_template)
            line.update(
                id=generate_id("il_"),
                amount=amount,
                currency=item["price"]["currency"],
                description=(
                    f"Trial period for {self._product_name(item['price']['product'])}"
                    if trialing and not metered
                    else f"{quantity} x {self._product_name(item['price']['product'])}"
                ),
                discount_amounts=[],
                discounts=[],
                invoice=invoice_id,
                metadata=copy.deepcopy(sub["metadata"]),
                parent={
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": sub["id"],
                        "subscription_item": item["id"],
                    },
                    "type": "subscription_item_details",
                },
                period=period,
                pretax_credit_amounts=[],
                pricing={
                    "price_details": {
                        "price": item["price"]["id"],
                        "product": item["price"]["product"],
                    },
                    "type": "price_details",
                    "unit_amount_decimal": str(unit),
                },
                quantity=quantity if metered else item["quantity"],
                subscription=sub["id"],
                subtotal=amount,
                taxes=[],
            )
            lines.append(line)
        lines.extend(self._pending_item_lines_locked(sub, invoice_id, line_template))
        total = sum(line["amount"] for line in lines)
        due = max(total, 0)  # a net credit goes to the customer's balance
        now = self.now()
        first = sub["items"]["data"][0] if sub["items"]["data"] else None
        invoice.update(
            id=invoice_id,
            account_name="Kernia Fake Stripe",
            amount_due=due,
            amount_overpaid=0,
            amount_paid=due if paid else 0,
            amount_remaining=0 if paid else due,
            attempt_count=0,
            attempted=False,
            auto_advance=not paid,
            billing_reason=billing_reason,
            created=now,
            currency=sub["currency"],
            customer=sub["customer"],
            customer_address=customer.get("address"),
            customer_email=customer.get("email"),
            customer_name=customer.get("name"),
            customer_phone=customer.get("phone"),
            customer_shipping=customer.get("shipping"),
            due_date=None,
            effective_at=now,
            ending_balance=0,
            from_invoice=None,
            hosted_invoice_url=f"{self.base_url}/invoice/{invoice_id}",
            invoice_pdf=None,
            last_finalization_error=None,
            lines={
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            livemode=False,
            metadata={},
            next_payment_attempt=None if paid else now + 3 * 86400,
            number="{}-{:04d}".format(
                customer.get("invoice_prefix", "FAKE"), customer.get("next_invoice_sequence", 1)
            ),
            parent={
                "quote_details": None,
                "subscription_details": {
                    "metadata": copy.deepcopy(sub["metadata"]),
                    "subscription": sub["id"],
                },
                "type": "subscription_details",
            },
            period_end=first["current_period_end"] if first else now,
            period_start=first["current_period_start"] if first else now,
            shipping_cost=None,
            shipping_details=None,
            status="paid" if paid else "open",
            status_transitions={
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": now if paid else None,
                "voided_at": None,
            },
            subscription=sub["id"],
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            total_pretax_credit_amounts=[],
            total_taxes=[],
            webhooks_delivered_at=None,
        )
        if customer:
            customer["next_invoice_sequence"] = int(customer.get("next_invoice_sequence") or 1) + 1
        self._bucket("invoice")[invoice_id] = invoice
        sub["latest_invoice"] = invoice_id
        if due > 0 and sub["collection_method"] == "charge_automatically":
            self._invoice_intents[invoice_id] = self._new_payment_intent(invoice)["id"]
        self._emit("invoice.created", invoice)
        self._emit("invoice.finalized", invoice)
        return invoice

    def _pending_item_lines_locked(
        self, sub: JSON, invoice_id: str, line_template: JSON
    ) -> list[JSON]:
        """Lines for pending invoice items (prorations; the plan changes layer)."""
        return []

    def _metered_usage_locked(self, sub: JSON, item: JSON) -> tuple[int, JSON]:
        """A metered item's quantity: its meter's total over the period before the current
        one (nothing on a subscription's first invoice)."""
        n = self._period_no.get(item["id"], 0)
        meter = (item["price"].get("recurring") or {}).get("meter")
        if n <= 0 or not meter:
            start = int(item["current_period_start"])
            return 0, {"start": start, "end": start}
        start, end = self._item_period(sub, item["price"], n - 1)
        return self.metered_quantity(meter, sub["customer"], start, end), {
            "start": start,
            "end": end,
        }

    def _settle_invoice_locked(
        self,
        sub: JSON,
        invoice: JSON,
        *,
        attempt: bool,
        payment_method: str | None = None,
        decline: bool = False,
    ) -> bool:
        """Charge an open invoice as Stripe would; return whether it is now paid.

        Nothing is due: paid. ``send_invoice``: stays open for the customer.
        Otherwise the payment method (given, else the subscription's or the
        customer's default) pays it; without one the invoice stays open and,
        if ``attempt``, the attempt fails (``invoice.payment_failed``).
        """
        if invoice["amount_due"] == 0 and not decline:
            self._mark_paid(invoice, None)
            return True
        if sub["collection_method"] != "charge_automatically":
            return False
        pm = payment_method or self._default_payment_method(sub)
        if pm and not decline:
            self._mark_paid(invoice, pm)
            return True
        if attempt:
            now = self.now()
            invoice.update(
                attempt_count=invoice["attempt_count"] + 1,
                attempted=True,
                next_payment_attempt=now + 3 * 86400,
            )
            self._emit("invoice.payment_failed", invoice)
        return False

    def _mark_paid(self, invoice: JSON, payment_method: str | None) -> None:
        now = self.now()
        invoice.update(
            amount_paid=invoice["amount_due"],
            amount_remaining=0,
            attempt_count=invoice["attempt_count"] + (1 if invoice["amount_due"] else 0),
            attempted=True,
            auto_advance=False,
            next_payment_attempt=None,
            status="paid",
        )
        invoice["status_transitions"]["paid_at"] = now
        intent_id = self._invoice_intents.get(invoice["id"])
        if intent_id:
            intent = self._bucket("payment_intent")[intent_id]
            intent.update(
                amount_received=intent["amount"], payment_method=payment_method, status="succeeded"
            )
        self._emit("invoice.paid", invoice)
        self._emit("invoice.payment_succeeded", invoice)

    def invoice_payments(self, invoice_id: str) -> list[JSON]:
        """The invoice's payments (``invoice.payments``, included on ``expand``)."""
        with self.lock:
            invoice = self._get("invoice", invoice_id)
            intent_id = self._invoice_intents.get(invoice_id)
            if intent_id is None:
                return []
            intent = self._bucket("payment_intent")[intent_id]
            paid = intent["status"] == "succeeded"
            payment = template("invoice_payment")
            payment.update(
                id="inpay_" + intent_id[len("pi_") :],
                amount_paid=intent["amount_received"] if paid else None,
                amount_requested=intent["amount"],
                created=intent["created"],
                currency=intent["currency"],
                invoice=invoice_id,
                is_default=True,
                livemode=False,
                payment={"payment_intent": intent_id, "type": "payment_intent"},
                status="paid" if paid else "open",
                status_transitions={
                    "canceled_at": None,
                    "paid_at": invoice["status_transitions"]["paid_at"] if paid else None,
                },
            )
            return [payment]

    def pay_invoice(self, invoice_id: str, params: JSON) -> JSON:
        """POST /v1/invoices/{id}/pay: pay an open invoice; its subscription becomes active."""
        with self.lock:
            invoice = self._get("invoice", invoice_id)
            if invoice["status"] != "open":
                raise StripeError(400, "Invoice is already paid")
            pm = params.get("payment_method") or None
            if pm:
                self._check_payment_method(str(pm), "payment_method")
            sub = self._bucket("subscription").get(invoice.get("subscription") or "")
            if sub is None:
                raise StripeError.invalid("The fake only pays subscription invoices.")
            pm = pm or self._default_payment_method(sub)
            if not pm and invoice["amount_due"]:
                raise StripeError(
                    400,
                    "This customer has no attached payment source or default payment method. "
                    "Please consider adding a default payment method.",
                )
            before = copy.deepcopy(sub)
            self._mark_paid(invoice, pm)
            self._after_payment_locked(sub, before)
            return _snapshot(invoice)

    def _after_payment_locked(self, sub: JSON, before: JSON) -> None:
        """A paid latest invoice makes an incomplete or past-due subscription active."""
        if sub["status"] in ("incomplete", "past_due", "unpaid"):
            sub["status"] = "active"
            self._emit("customer.subscription.updated", sub, _diff(before, sub))

    def _product_name(self, product_id: str) -> str:
        product = self._bucket("product").get(product_id)
        return str(product["name"]) if product else product_id

    # ----------------------------------------------------------------- invoices

    def list_invoices(self, params: JSON) -> list[JSON]:
        """GET /v1/invoices filters: customer, subscription, status."""

        def keep(invoice: JSON) -> bool:
            return all(
                not params.get(key) or invoice.get(key) == params[key]
                for key in ("customer", "subscription", "status")
            )

        return self.list_objects("invoice", keep)
