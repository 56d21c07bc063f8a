"""Invoices (and their payment intents) of the fake Stripe."""

from __future__ import annotations

import copy

from .core import (
    JSON,
    generate_id,
    template,
)
from .customers import CustomerStore


class InvoiceStore(CustomerStore):
    """Invoices (and their payment intents) of the fake Stripe."""

    def _create_invoice_locked(self, sub: JSON, billing_reason: str, paid: bool = True) -> JSON:
        customer = self._bucket("customer").get(sub["customer"], {})
        invoice = template("invoice")
        line_template = invoice["lines"]["data"][0]
        invoice_id = generate_id("in_")
        lines = []
        trialing = sub["status"] == "trialing"
        for item in sub["items"]["data"]:
            unit = 0 if trialing else int(item["price"]["unit_amount"] or 0)
            amount = unit * int(item["quantity"] or 1)
            line = copy.deepcopy(line_template)
            line.update(
                id=generate_id("il_"),
                amount=amount,
                currency=item["price"]["currency"],
                description=(
                    f"Trial period for {self._product_name(item['price']['product'])}"
                    if trialing
                    else f"{item['quantity']} x {self._product_name(item['price']['product'])}"
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
                period={"start": item["current_period_start"], "end": item["current_period_end"]},
                pretax_credit_amounts=[],
                pricing={
                    "price_details": {
                        "price": item["price"]["id"],
                        "product": item["price"]["product"],
                    },
                    "type": "price_details",
                    "unit_amount_decimal": str(unit),
                },
                quantity=item["quantity"],
                subscription=sub["id"],
                subtotal=amount,
                taxes=[],
            )
            lines.append(line)
        total = sum(line["amount"] for line in lines)
        now = self.now()
        first = sub["items"]["data"][0] if sub["items"]["data"] else None
        invoice.update(
            id=invoice_id,
            account_name="Kernia Fake Stripe",
            amount_due=total,
            amount_overpaid=0,
            amount_paid=total if paid else 0,
            amount_remaining=0 if paid else total,
            attempt_count=1,
            attempted=True,
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
        self._emit("invoice.created", invoice)
        self._emit("invoice.paid" if paid else "invoice.payment_failed", invoice)
        return invoice

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
