"""Plan changes in the fake Stripe: prorations, invoice previews, subscription schedules.

- ``POST /v1/subscriptions/{id}`` with changed items prorates as Stripe does
  (``proration_behavior``: ``create_prorations``, the default, leaves pending
  ``invoiceitem`` rows for the next invoice; ``always_invoice`` invoices them now;
  ``none`` creates none). A change of billing interval resets the billing cycle
  anchor to now and invoices the new period at once, crediting the unused time.
  Prorations are by the second over the item's current period.
- ``POST /v1/invoices/create_preview``: the invoice Stripe would create, for the
  subscription as it is or with ``subscription_details`` changes. With
  ``always_invoice`` it is the invoice of the change itself; else the next
  renewal, including metered items priced from this period's meter usage.
- ``/v1/subscription_schedules``: ``from_subscription``, phases, release and
  cancel; at a period end a schedule's next phase replaces the items.
- ``customer.subscription.trial_will_end``: :meth:`ScheduleStore.trial_will_end_due`
  sends it, as Stripe does three days before a trial ends.
"""

from __future__ import annotations

import copy
from typing import Any

from .checkout import CheckoutStore
from .core import (
    JSON,
    StripeError,
    _diff,
    _int,
    _merge_metadata,
    _snapshot,
    generate_id,
    period_boundary,
    template,
)

PRORATION_BEHAVIORS = ("create_prorations", "always_invoice", "none")
TRIAL_WILL_END_SECONDS = 3 * 86400


def _interval(price: JSON) -> tuple[str, int]:
    recurring = price.get("recurring") or {}
    return str(recurring.get("interval") or ""), int(recurring.get("interval_count") or 1)


def _metered(price: JSON) -> bool:
    return bool((price.get("recurring") or {}).get("usage_type") == "metered")


class ScheduleStore(CheckoutStore):
    """Prorations, invoice previews and subscription schedules."""

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self._trial_notified: set[str] = set()
            self._new_period_now = False

    # ----------------------------------------------------------------- prorations

    def _behavior(self, params: JSON) -> str:
        behavior = str(params.get("proration_behavior") or "create_prorations")
        if behavior not in PRORATION_BEHAVIORS:
            raise StripeError.invalid(
                "Invalid proration_behavior: must be one of always_invoice, "
                "create_prorations, or none",
                param="proration_behavior",
            )
        return behavior

    def _proration_lines(
        self, sub: JSON, old_items: list[JSON], at: int, *, reset_anchor: bool
    ) -> list[JSON]:
        """Invoice items (not stored) crediting unused old time and charging new time."""
        if sub["status"] == "trialing":
            return []
        new_by_id = {item["id"]: item for item in sub["items"]["data"]}
        lines: list[JSON] = []
        for old in old_items:
            if _metered(old["price"]):
                continue
            start, end = int(old["current_period_start"]), int(old["current_period_end"])
            if not start < at < end:
                continue
            fraction = (end - at) / (end - start)
            new = new_by_id.get(old["id"])
            unchanged = (
                new is not None
                and new["price"]["id"] == old["price"]["id"]
                and new["quantity"] == old["quantity"]
                and not reset_anchor
            )
            if unchanged:
                continue
            old_amount = int(old["price"]["unit_amount"] or 0) * int(old["quantity"] or 1)
            lines.append(
                self._proration_item(sub, old, -round(old_amount * fraction), at, end, "Unused")
            )
            if new is not None and not reset_anchor:
                amount = int(new["price"]["unit_amount"] or 0) * int(new["quantity"] or 1)
                lines.append(
                    self._proration_item(sub, new, round(amount * fraction), at, end, "Remaining")
                )
        if not reset_anchor:
            old_ids = {item["id"] for item in old_items}
            for new in sub["items"]["data"]:
                if new["id"] in old_ids or _metered(new["price"]):
                    continue
                start, end = int(new["current_period_start"]), int(new["current_period_end"])
                if start < at < end:
                    amount = int(new["price"]["unit_amount"] or 0) * int(new["quantity"] or 1)
                    fraction = (end - at) / (end - start)
                    lines.append(
                        self._proration_item(
                            sub, new, round(amount * fraction), at, end, "Remaining"
                        )
                    )
        return lines

    def _proration_item(
        self, sub: JSON, item: JSON, amount: int, start: int, end: int, what: str
    ) -> JSON:
        invoice_item = template("invoiceitem")
        product = self._product_name(item["price"]["product"])
        invoice_item.update(
            id=generate_id("ii_"),
            amount=amount,
            currency=item["price"]["currency"],
            customer=sub["customer"],
            customer_account=None,
            date=self.now(),
            description=f"{what} time on {item['quantity']} x {product}",
            discountable=False,
            discounts=[],
            invoice=None,
            livemode=False,
            metadata={},
            net_amount=amount,
            parent={
                "subscription_details": {
                    "subscription": sub["id"],
                    "subscription_item": item["id"],
                },
                "type": "subscription_details",
            },
            period={"start": start, "end": end},
            pricing={
                "price_details": {
                    "price": item["price"]["id"],
                    "product": item["price"]["product"],
                },
                "type": "price_details",
                "unit_amount_decimal": str(item["price"]["unit_amount"] or 0),
            },
            proration=True,
            quantity=int(item["quantity"] or 1),
            quantity_decimal=str(item["quantity"] or 1),
            tax_rates=[],
            test_clock=None,
        )
        return invoice_item

    def _prorate_locked(self, sub: JSON, old_items: list[JSON], params: JSON) -> bool:
        behavior = self._behavior(params)
        now = self.now()
        if params.get("proration_date") not in (None, ""):
            now = _int(params["proration_date"], "proration_date")
        reset_anchor = self._reset_anchor_if_interval_changed(sub, old_items)
        if behavior != "none":
            for invoice_item in self._proration_lines(
                sub, old_items, now, reset_anchor=reset_anchor
            ):
                self._bucket("invoiceitem")[invoice_item["id"]] = invoice_item
                self._emit("invoiceitem.created", invoice_item)
        # A new billing period starts now when the interval changed: invoiced at once.
        self._new_period_now = reset_anchor
        return reset_anchor or behavior == "always_invoice"

    def _invoice_change_locked(self, sub: JSON) -> None:
        if self._new_period_now:
            self._renew_locked(sub, "subscription_update")
            return
        invoice = self._create_invoice_locked(sub, "subscription_update", period_lines=False)
        paid = self._settle_invoice_locked(sub, invoice, attempt=True)
        if not paid and sub["collection_method"] == "charge_automatically":
            before = copy.deepcopy(sub)
            sub["status"] = "past_due"
            self._emit("customer.subscription.updated", sub, _diff(before, sub))

    def _reset_anchor_if_interval_changed(self, sub: JSON, old_items: list[JSON]) -> bool:
        if sub["status"] == "trialing":
            return False
        old = {item["id"]: _interval(item["price"]) for item in old_items}
        changed = any(
            item["id"] in old and old[item["id"]] != _interval(item["price"])
            for item in sub["items"]["data"]
        )
        if changed:
            self._restart_periods(sub, self.now())
        return changed

    def _restart_periods(self, sub: JSON, at: int) -> None:
        sub["billing_cycle_anchor"] = at
        for item in sub["items"]["data"]:
            self._period_no[item["id"]] = 0
            self._refresh_item(sub, item)

    def _pending_items_locked(self, sub: JSON) -> list[JSON]:
        return [
            item
            for item in self._bucket("invoiceitem").values()
            if item["invoice"] is None
            and item["customer"] == sub["customer"]
            and (item.get("parent") or {}).get("subscription_details", {}).get("subscription")
            == sub["id"]
        ]

    def _invoice_line(self, line_template: JSON, invoice_id: str, invoice_item: JSON) -> JSON:
        details = invoice_item["parent"]["subscription_details"]
        line = copy.deepcopy(line_template)
        line.update(
            id=generate_id("il_"),
            amount=invoice_item["amount"],
            currency=invoice_item["currency"],
            description=invoice_item["description"],
            discount_amounts=[],
            discounts=[],
            invoice=invoice_id,
            metadata={},
            parent={
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": invoice_item["id"],
                    "proration": bool(invoice_item["proration"]),
                    "proration_details": {"credited_items": None},
                    "subscription": details["subscription"],
                    "subscription_item": details.get("subscription_item"),
                },
                "type": "subscription_item_details",
            },
            period=copy.deepcopy(invoice_item["period"]),
            pretax_credit_amounts=[],
            pricing=copy.deepcopy(invoice_item["pricing"]),
            quantity=invoice_item["quantity"],
            subscription=details["subscription"],
            subtotal=invoice_item["amount"],
            taxes=[],
        )
        return line

    def _pending_item_lines_locked(
        self, sub: JSON, invoice_id: str, line_template: JSON
    ) -> list[JSON]:
        lines = []
        for invoice_item in self._pending_items_locked(sub):
            invoice_item["invoice"] = invoice_id
            lines.append(self._invoice_line(line_template, invoice_id, invoice_item))
        return lines

    # ----------------------------------------------------------------- previews

    def create_invoice_preview(self, params: JSON) -> JSON:
        """POST /v1/invoices/create_preview: nothing is stored, no event is sent."""
        with self.lock:
            sub = self._preview_subscription(params)
            details = params.get("subscription_details") or {}
            if not isinstance(details, dict):
                raise StripeError.invalid("Invalid hash", param="subscription_details")
            behavior = self._behavior(details)
            # Work on copies: the item index and period numbers are restored after.
            saved = (dict(self._item_index), dict(self._period_no), sub)
            work = copy.deepcopy(sub)
            try:
                return self._preview_locked(work, details, behavior)
            finally:
                self._item_index, self._period_no = saved[0], saved[1]

    def _preview_subscription(self, params: JSON) -> JSON:
        sub_id = params.get("subscription")
        customer_id = params.get("customer")
        if not sub_id and not customer_id:
            raise StripeError.invalid(
                "You must pass one of `customer`, `customer_account` or `subscription`.",
                param="customer",
            )
        if sub_id:
            sub = self._get("subscription", str(sub_id), "subscription")
            if customer_id and sub["customer"] != customer_id:
                raise StripeError.invalid(
                    f"The subscription `{sub_id}` does not belong to customer `{customer_id}`.",
                    param="subscription",
                )
            if sub["status"] in ("canceled", "incomplete_expired"):
                raise StripeError(
                    404,
                    f"No upcoming invoices for subscription: {sub_id}",
                    code="invoice_upcoming_none",
                )
            return sub
        self._live_customer(str(customer_id), "customer")
        for sub in self._bucket("subscription").values():
            if sub["customer"] == customer_id and sub["status"] not in (
                "canceled",
                "incomplete_expired",
            ):
                return sub
        raise StripeError(
            404, f"No upcoming invoices for customer: {customer_id}", code="invoice_upcoming_none"
        )

    def _preview_locked(self, sub: JSON, details: JSON, behavior: str) -> JSON:
        now = self.now()
        if details.get("proration_date") not in (None, ""):
            now = _int(details["proration_date"], "subscription_details[proration_date]")
        old_items = copy.deepcopy(sub["items"]["data"])
        prorations: list[JSON] = []
        reset_anchor = False
        if details.get("items"):
            self._update_items(sub, details["items"])
            reset_anchor = self._reset_anchor_if_interval_changed(sub, old_items)
            if behavior != "none":
                prorations = self._proration_lines(sub, old_items, now, reset_anchor=reset_anchor)
        invoice = template("invoice")
        line_template = invoice["lines"]["data"][0]
        invoice_id = "upcoming_" + generate_id("in_")
        pending = [copy.deepcopy(i) for i in self._pending_items_locked(sub)]
        lines = [self._invoice_line(line_template, invoice_id, i) for i in pending + prorations]
        immediate = reset_anchor or behavior == "always_invoice"
        if not immediate or reset_anchor:
            lines.extend(
                self._period_lines(sub, line_template, invoice_id, next_period=not immediate)
            )
        total = sum(int(line["amount"]) for line in lines)
        customer = self._bucket("customer").get(sub["customer"], {})
        first = sub["items"]["data"][0]
        period_end = int(first["current_period_end"])
        invoice.update(
            id=invoice_id,
            account_name="Kernia Fake Stripe",
            amount_due=max(total, 0),
            amount_paid=0,
            amount_remaining=max(total, 0),
            attempt_count=0,
            attempted=False,
            auto_advance=False,
            billing_reason="subscription_update" if immediate else "upcoming",
            created=now if immediate else period_end,
            currency=sub["currency"],
            customer=sub["customer"],
            customer_email=customer.get("email"),
            customer_name=customer.get("name"),
            due_date=None,
            effective_at=None,
            ending_balance=None,
            hosted_invoice_url=None,
            invoice_pdf=None,
            lines={
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            livemode=False,
            metadata={},
            next_payment_attempt=None,
            number=None,
            parent={
                "quote_details": None,
                "subscription_details": {
                    "metadata": copy.deepcopy(sub["metadata"]),
                    "subscription": sub["id"],
                },
                "type": "subscription_details",
            },
            period_end=now if immediate else period_end,
            period_start=now if immediate else int(first["current_period_start"]),
            status="draft",
            status_transitions={
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
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
        return _snapshot(invoice)

    def _period_lines(
        self, sub: JSON, line_template: JSON, invoice_id: str, *, next_period: bool
    ) -> list[JSON]:
        """Lines of a period's invoice: licensed items for the period ahead, metered items
        for the usage of the period that ends (this period's meter usage so far)."""
        lines = []
        for item in sub["items"]["data"]:
            price = item["price"]
            n = self._period_no.get(item["id"], 0)
            if _metered(price):
                meter = (price.get("recurring") or {}).get("meter")
                start, end = int(item["current_period_start"]), int(item["current_period_end"])
                quantity = self.metered_quantity(meter, sub["customer"], start, end) if meter else 0
            else:
                start, end = self._item_period(sub, price, n + 1 if next_period else max(n, 0))
                quantity = int(item["quantity"] or 1)
            amount = int(price["unit_amount"] or 0) * quantity
            invoice_item = {
                "id": None,
                "amount": amount,
                "currency": price["currency"],
                "description": f"{quantity} x {self._product_name(price['product'])}",
                "parent": {
                    "subscription_details": {
                        "subscription": sub["id"],
                        "subscription_item": item["id"],
                    }
                },
                "period": {"start": start, "end": end},
                "pricing": {
                    "price_details": {"price": price["id"], "product": price["product"]},
                    "type": "price_details",
                    "unit_amount_decimal": str(price["unit_amount"] or 0),
                },
                "proration": False,
                "quantity": quantity,
            }
            lines.append(self._invoice_line(line_template, invoice_id, invoice_item))
        return lines

    # ----------------------------------------------------------------- schedules

    def _phase(self, items: list[JSON], start: int, end: int | None) -> JSON:
        return {
            "add_invoice_items": [],
            "application_fee_percent": None,
            "billing_cycle_anchor": None,
            "billing_thresholds": None,
            "collection_method": None,
            "currency": "usd",
            "default_payment_method": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [],
            "end_date": end,
            "invoice_settings": None,
            "items": items,
            "metadata": {},
            "on_behalf_of": None,
            "proration_behavior": "create_prorations",
            "start_date": start,
            "transfer_data": None,
            "trial_end": None,
        }

    def _phase_item(self, price_id: str, quantity: int) -> JSON:
        return {
            "billing_thresholds": None,
            "discounts": [],
            "metadata": {},
            "plan": price_id,
            "price": price_id,
            "quantity": quantity,
            "tax_rates": [],
        }

    def create_subscription_schedule(self, params: JSON) -> JSON:
        """POST /v1/subscription_schedules (``from_subscription`` only)."""
        sub_id = params.get("from_subscription")
        if not sub_id:
            raise StripeError.invalid(
                "The fake creates subscription schedules from_subscription only.",
                param="from_subscription",
            )
        with self.lock:
            sub = self._live_subscription(str(sub_id))
            if sub.get("schedule"):
                raise StripeError.invalid(
                    "You cannot migrate a subscription that is already attached to a "
                    f"schedule: `{sub['schedule']}`.",
                    param="from_subscription",
                )
            first = sub["items"]["data"][0]
            phase = self._phase(
                [
                    self._phase_item(i["price"]["id"], int(i["quantity"] or 1))
                    for i in sub["items"]["data"]
                ],
                int(first["current_period_start"]),
                self._period_end(sub),
            )
            phase["currency"] = sub["currency"]
            schedule: JSON = {
                "id": generate_id("sub_sched_"),
                "object": "subscription_schedule",
                "application": None,
                "billing_mode": {"type": "classic"},
                "canceled_at": None,
                "completed_at": None,
                "created": self.now(),
                "current_phase": {"end_date": phase["end_date"], "start_date": phase["start_date"]},
                "customer": sub["customer"],
                "customer_account": None,
                "default_settings": {},
                "end_behavior": "release",
                "livemode": False,
                "metadata": _merge_metadata({}, params.get("metadata")),
                "phases": [phase],
                "released_at": None,
                "released_subscription": None,
                "status": "active",
                "subscription": sub["id"],
                "test_clock": None,
            }
            self._bucket("subscription_schedule")[schedule["id"]] = schedule
            self._emit("subscription_schedule.created", schedule)
            before = copy.deepcopy(sub)
            sub["schedule"] = schedule["id"]
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
            return _snapshot(schedule)

    def _live_schedule(self, schedule_id: str) -> JSON:
        schedule = self._get("subscription_schedule", schedule_id)
        if schedule["status"] not in ("active", "not_started"):
            raise StripeError.invalid(
                "You cannot update a subscription schedule that is currently in the "
                f"`{schedule['status']}` status. It must be in one of the following statuses: "
                "`not_started`, `active`."
            )
        return schedule

    def update_subscription_schedule(self, schedule_id: str, params: JSON) -> JSON:
        """POST /v1/subscription_schedules/{id}: phases, end_behavior, metadata."""
        with self.lock:
            schedule = self._live_schedule(schedule_id)
            before = copy.deepcopy(schedule)
            if "metadata" in params:
                schedule["metadata"] = _merge_metadata(schedule["metadata"], params["metadata"])
            if params.get("end_behavior"):
                if params["end_behavior"] not in ("release", "cancel"):
                    raise StripeError.invalid(
                        "Invalid end_behavior: the fake supports release and cancel.",
                        param="end_behavior",
                    )
                schedule["end_behavior"] = params["end_behavior"]
            if "phases" in params:
                schedule["phases"] = self._parse_phases(schedule, params["phases"])
                current = schedule["phases"][0]
                schedule["current_phase"] = {
                    "end_date": current["end_date"],
                    "start_date": current["start_date"],
                }
            changes = _diff(before, schedule)
            if changes:
                self._emit("subscription_schedule.updated", schedule, changes)
            return _snapshot(schedule)

    def _parse_phases(self, schedule: JSON, raw: Any) -> list[JSON]:
        if not isinstance(raw, list) or not raw:
            raise StripeError.invalid(
                "Invalid array", param="phases", code="parameter_invalid_array"
            )
        current_start = int(schedule["current_phase"]["start_date"])
        phases: list[JSON] = []
        start = current_start
        for index, phase in enumerate(raw):
            if not isinstance(phase, dict):
                raise StripeError.invalid("Invalid hash", param=f"phases[{index}]")
            if index == 0 and phase.get("start_date") not in (None, ""):
                given = _int(phase["start_date"], "phases[0][start_date]")
                if given != current_start:
                    raise StripeError.invalid(
                        "You can not modify the start date of the current phase.",
                        param="phases[0][start_date]",
                    )
            items = phase.get("items")
            if not isinstance(items, list) or not items:
                raise StripeError.required(f"phases[{index}][items]")
            parsed = []
            for n, item in enumerate(items):
                param = f"phases[{index}][items][{n}]"
                if not isinstance(item, dict) or not item.get("price"):
                    raise StripeError.required(f"{param}[price]")
                price = self._price_for_item(str(item["price"]), f"{param}[price]")
                parsed.append(
                    self._phase_item(
                        price["id"], _int(item.get("quantity", 1), f"{param}[quantity]")
                    )
                )
            end: int | None = None
            if phase.get("end_date") not in (None, ""):
                end = _int(phase["end_date"], f"phases[{index}][end_date]")
            elif isinstance(phase.get("duration"), dict):
                duration = phase["duration"]
                interval = str(duration.get("interval") or "")
                count = _int(duration.get("interval_count", 1), f"phases[{index}][duration]")
                end = period_boundary(start, interval, count, 1)
            elif index < len(raw) - 1:
                raise StripeError.invalid(
                    f"Phase {index} needs an end_date or iterations: it is not the last phase.",
                    param=f"phases[{index}][end_date]",
                )
            if end is not None and end <= start:
                raise StripeError.invalid(
                    "The end date of a phase must be after its start date.",
                    param=f"phases[{index}][end_date]",
                )
            phases.append(self._phase(parsed, start, end))
            if end is not None:
                start = end
        return phases

    def release_subscription_schedule(self, schedule_id: str) -> JSON:
        """POST /v1/subscription_schedules/{id}/release: the subscription stays as it is."""
        with self.lock:
            schedule = self._live_schedule(schedule_id)
            self._end_schedule(schedule, "released")
            return _snapshot(schedule)

    def cancel_subscription_schedule(self, schedule_id: str) -> JSON:
        """POST /v1/subscription_schedules/{id}/cancel: cancels its subscription too."""
        with self.lock:
            schedule = self._live_schedule(schedule_id)
            sub = self._bucket("subscription").get(schedule["subscription"] or "")
            self._end_schedule(schedule, "canceled")
            if sub is not None and sub["status"] not in ("canceled", "incomplete_expired"):
                self._cancel_subscription_locked(sub)
            return _snapshot(schedule)

    def _end_schedule(self, schedule: JSON, status: str) -> None:
        before = copy.deepcopy(schedule)
        now = self.now()
        sub = self._bucket("subscription").get(schedule["subscription"] or "")
        schedule["status"] = status
        schedule["current_phase"] = None
        if status == "released":
            schedule["released_at"] = now
            schedule["released_subscription"] = schedule["subscription"]
        else:
            schedule["canceled_at"] = now
        schedule["subscription"] = None if status == "released" else schedule["subscription"]
        self._emit(f"subscription_schedule.{status}", schedule, _diff(before, schedule))
        if sub is not None and sub.get("schedule") == schedule["id"]:
            sub_before = copy.deepcopy(sub)
            sub["schedule"] = None
            self._emit("customer.subscription.updated", sub, _diff(sub_before, sub))

    def _on_period_boundary_locked(self, sub: JSON) -> None:
        """At a period end, the schedule's phase that starts now replaces the items."""
        schedule_id = sub.get("schedule")
        if not schedule_id:
            return
        schedule = self._bucket("subscription_schedule").get(schedule_id)
        if schedule is None or schedule["status"] != "active":
            return
        now = self.now()
        phase = next(
            (
                p
                for p in schedule["phases"]
                if p["start_date"] <= now and (p["end_date"] or now + 1) > now
            ),
            None,
        )
        if phase is None:  # past the last phase
            if schedule["end_behavior"] == "cancel":
                self._end_schedule(schedule, "canceled")
                self._cancel_subscription_locked(sub)
            else:
                schedule["status"] = "completed"
                schedule["completed_at"] = now
                self._end_schedule(schedule, "released")
            return
        current = schedule["current_phase"] or {}
        if current.get("start_date") == phase["start_date"]:
            return
        data: list[JSON] = sub["items"]["data"]
        for old in list(data):
            self._item_index.pop(old["id"], None)
        data.clear()
        for item in phase["items"]:
            price = self._get("price", item["price"])
            data.append(self._new_item(sub, price, int(item["quantity"] or 1), None, 0))
        sub["items"]["total_count"] = len(data)
        self._restart_periods(sub, now)  # the phase's items start their periods now
        before = copy.deepcopy(schedule)
        schedule["current_phase"] = {
            "end_date": phase["end_date"],
            "start_date": phase["start_date"],
        }
        self._emit("subscription_schedule.updated", schedule, _diff(before, schedule))

    # ----------------------------------------------------------------- trials

    def trial_will_end_due(self) -> list[str]:
        """Send ``customer.subscription.trial_will_end`` for every trial ending within three
        days (once per subscription), as Stripe does; returns the subscriptions' ids."""
        sent = []
        with self.lock:
            now = self.now()
            for sub in self._bucket("subscription").values():
                if sub["status"] != "trialing" or sub["id"] in self._trial_notified:
                    continue
                if int(sub["trial_end"] or 0) - now <= TRIAL_WILL_END_SECONDS:
                    self._trial_notified.add(sub["id"])
                    self._emit("customer.subscription.trial_will_end", sub)
                    sent.append(sub["id"])
        return sent

    def retrieve_subscription_schedule(self, schedule_id: str) -> JSON:
        with self.lock:
            return _snapshot(self._get("subscription_schedule", schedule_id))
