"""Subscriptions and subscription items of the fake Stripe."""

from __future__ import annotations

import copy
from typing import Any

from .core import (
    JSON,
    SUBSCRIPTION_STATUSES,
    StripeError,
    _bool,
    _diff,
    _int,
    _merge_metadata,
    _require,
    _snapshot,
    generate_id,
    period_boundary,
    template,
)
from .invoices import InvoiceStore


class SubscriptionStore(InvoiceStore):
    """Subscriptions and subscription items of the fake Stripe."""

    # ----------------------------------------------------------------- subscriptions

    def _price_for_item(self, price_id: str, param: str) -> JSON:
        price = self._get("price", price_id, param)
        if price["type"] != "recurring":
            raise StripeError.invalid(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=param,
            )
        if not price["active"]:
            raise StripeError.invalid(
                "The price specified is inactive. This field only accepts active prices.",
                param=param,
            )
        return price

    def _item_period(self, sub: JSON, price: JSON, n: int) -> tuple[int, int]:
        if n < 0:
            return int(sub["trial_start"]), int(sub["trial_end"])
        recurring = price["recurring"]
        anchor = int(sub["billing_cycle_anchor"])
        interval, count = recurring["interval"], int(recurring["interval_count"])
        return (
            period_boundary(anchor, interval, count, n),
            period_boundary(anchor, interval, count, n + 1),
        )

    def _refresh_item(self, sub: JSON, item: JSON) -> None:
        price: JSON = self._bucket("price").get(item["price"]["id"]) or item["price"]
        item["price"] = _snapshot(price)
        item["plan"] = self._plan(price)
        start, end = self._item_period(sub, price, self._period_no[item["id"]])
        item["current_period_start"], item["current_period_end"] = start, end

    def _new_item(self, sub: JSON, price: JSON, quantity: int, metadata: Any, n: int) -> JSON:
        item = template("subscription_item")
        item.update(
            id=generate_id("si_", 14),
            billing_thresholds=None,
            created=self._created(),
            discounts=[],
            metadata=_merge_metadata({}, metadata),
            price=_snapshot(price),
            quantity=quantity,
            subscription=sub["id"],
            tax_rates=[],
        )
        self._item_index[item["id"]] = sub["id"]
        self._period_no[item["id"]] = n
        self._refresh_item(sub, item)
        return item

    def _current_period_number(self, sub: JSON) -> int:
        numbers = [self._period_no[item["id"]] for item in sub["items"]["data"]]
        return min(numbers) if numbers else 0

    def _period_end(self, sub: JSON) -> int:
        return min(int(item["current_period_end"]) for item in sub["items"]["data"])

    def create_subscription(self, params: JSON) -> JSON:
        """POST /v1/subscriptions."""
        with self.lock:
            sub = self._create_subscription_locked(params)
            return _snapshot(sub)

    def _create_subscription_locked(self, params: JSON) -> JSON:
        customer_id = str(_require(params, "customer"))
        self._live_customer(customer_id, "customer")
        raw_items = params.get("items")
        if not raw_items:
            raise StripeError.required("items")
        if not isinstance(raw_items, list):
            raise StripeError.invalid(
                "Invalid array", param="items", code="parameter_invalid_array"
            )
        prices = []
        for index, raw in enumerate(raw_items):
            price_id = raw.get("price") if isinstance(raw, dict) else None
            if not price_id:
                raise StripeError.required(f"items[{index}][price]")
            quantity = _int(raw.get("quantity", 1), f"items[{index}][quantity]")
            prices.append(
                (
                    self._price_for_item(str(price_id), f"items[{index}][price]"),
                    quantity,
                    raw.get("metadata"),
                )
            )
        now = self.now()
        trial_end: int | None = None
        if params.get("trial_end") not in (None, ""):
            trial_end = (
                now if params["trial_end"] == "now" else _int(params["trial_end"], "trial_end")
            )
            if trial_end != now and trial_end <= now:
                raise StripeError.invalid(
                    "Invalid timestamp: must be in the future", param="trial_end"
                )
        elif params.get("trial_period_days") not in (None, ""):
            days = _int(params["trial_period_days"], "trial_period_days")
            if days > 0:
                trial_end = now + days * 86400
        elif _bool(params.get("trial_from_plan", False), "trial_from_plan"):
            days = prices[0][0]["recurring"].get("trial_period_days")
            if days:
                trial_end = now + int(days) * 86400
        trialing = trial_end is not None and trial_end > now
        anchor = trial_end if trialing else now
        if params.get("billing_cycle_anchor") not in (None, "") and not trialing:
            anchor = _int(params["billing_cycle_anchor"], "billing_cycle_anchor")
        sub = template("subscription")
        sub_id = generate_id("sub_")
        sub.update(
            id=sub_id,
            automatic_tax={"disabled_reason": None, "enabled": False, "liability": None},
            billing_cycle_anchor=anchor,
            billing_cycle_anchor_config=None,
            billing_mode={"flexible": None, "type": "classic", "updated_at": None},
            billing_schedules=[],
            billing_thresholds=None,
            cancel_at=None,
            cancel_at_period_end=False,
            canceled_at=None,
            cancellation_details={"comment": None, "feedback": None, "reason": None},
            collection_method=str(params.get("collection_method", "charge_automatically")),
            created=now,
            currency=prices[0][0]["currency"],
            customer=customer_id,
            default_payment_method=params.get("default_payment_method") or None,
            description=params.get("description") or None,
            ended_at=None,
            latest_invoice=None,
            livemode=False,
            managed_payments=None,
            metadata=_merge_metadata({}, params.get("metadata")),
            next_pending_invoice_item_invoice=None,
            pause_collection=None,
            payment_settings={
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            pending_invoice_item_interval=None,
            pending_update=None,
            start_date=now,
            status="trialing" if trialing else "active",
            transfer_data=None,
            trial_end=trial_end,
            trial_start=now if trial_end is not None else None,
        )
        if isinstance(params.get("trial_settings"), dict):  # plan changes: trial end behavior
            behavior = (params["trial_settings"].get("end_behavior") or {}).get(
                "missing_payment_method"
            )
            if behavior not in ("cancel", "pause", "create_invoice"):
                raise StripeError.invalid(
                    "Invalid trial_settings[end_behavior][missing_payment_method]: must be one "
                    "of cancel, create_invoice, or pause",
                    param="trial_settings[end_behavior][missing_payment_method]",
                )
            sub["trial_settings"] = {"end_behavior": {"missing_payment_method": behavior}}
        sub["items"] = {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        }
        for price, quantity, metadata in prices:
            sub["items"]["data"].append(
                self._new_item(sub, price, quantity, metadata, -1 if trialing else 0)
            )
        sub["items"]["total_count"] = len(sub["items"]["data"])
        if "cancel_at_period_end" in params and _bool(
            params["cancel_at_period_end"], "cancel_at_period_end"
        ):
            self._schedule_cancel(sub)
        sub["status"] = self._initial_status(sub, trialing, params)
        self._bucket("subscription")[sub_id] = sub
        self._emit("customer.subscription.created", sub)
        invoice = self._create_invoice_locked(sub, "subscription_create")
        if sub["status"] != "incomplete":
            self._settle_invoice_locked(sub, invoice, attempt=True)
        return sub

    def _initial_status(self, sub: JSON, trialing: bool, params: JSON) -> str:
        """Stripe's status for a new subscription, before its first invoice is paid.

        ``trialing`` in a trial; ``active`` when nothing is due, for
        ``send_invoice``, or when a payment method pays the first invoice;
        ``incomplete`` otherwise (and always with ``default_incomplete``),
        with the invoice open and its payment intent needing a payment method.
        """
        behavior = str(params.get("payment_behavior") or "allow_incomplete")
        if sub["default_payment_method"]:
            self._check_payment_method(sub["default_payment_method"], "default_payment_method")
        if trialing:
            return "trialing"
        due = sum(
            int(item["price"]["unit_amount"] or 0) * int(item["quantity"] or 1)
            for item in sub["items"]["data"]
        )
        if due == 0 or sub["collection_method"] != "charge_automatically":
            return "active"
        if behavior == "default_incomplete":
            return "incomplete"
        if self._default_payment_method(sub):
            return "active"
        if behavior == "error_if_incomplete":
            raise StripeError(
                400,
                "This customer has no attached payment source or default payment method. "
                "Please consider adding a default payment method.",
            )
        return "incomplete"

    def _schedule_cancel(self, sub: JSON) -> None:
        sub["cancel_at_period_end"] = True
        sub["cancel_at"] = self._period_end(sub)
        sub["canceled_at"] = self.now()
        sub["cancellation_details"] = {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested",
        }

    def _unschedule_cancel(self, sub: JSON) -> None:
        sub["cancel_at_period_end"] = False
        sub["cancel_at"] = None
        sub["canceled_at"] = None
        sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": None}

    def _live_subscription(self, sub_id: str) -> JSON:
        sub = self._get("subscription", sub_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise StripeError.invalid(
                "A canceled subscription can only update its cancellation_details and metadata.",
                param=None,
            )
        return sub

    def update_subscription(self, sub_id: str, params: JSON) -> JSON:
        """POST /v1/subscriptions/{id}."""
        with self.lock:
            sub = self._get("subscription", sub_id)
            before = copy.deepcopy(sub)
            ended = sub["status"] in ("canceled", "incomplete_expired")
            if ended and set(params) - {"metadata", "cancellation_details", "expand"}:
                raise StripeError.invalid(
                    "A canceled subscription can only update its cancellation_details and metadata."
                )
            if "metadata" in params:
                sub["metadata"] = _merge_metadata(sub["metadata"], params["metadata"])
            if "description" in params:
                sub["description"] = params["description"] or None
            if "default_payment_method" in params:
                sub["default_payment_method"] = params["default_payment_method"] or None
            if isinstance(params.get("cancellation_details"), dict):
                sub["cancellation_details"].update(params["cancellation_details"])
            invoice_now = False
            if params.get("items"):
                old_items = copy.deepcopy(sub["items"]["data"])
                self._update_items(sub, params["items"])
                invoice_now = self._prorate_locked(sub, old_items, params)  # plan changes
            if "cancel_at_period_end" in params:
                if _bool(params["cancel_at_period_end"], "cancel_at_period_end"):
                    self._schedule_cancel(sub)
                else:
                    self._unschedule_cancel(sub)
            if "cancel_at" in params:
                if params["cancel_at"] in ("", None):
                    self._unschedule_cancel(sub)
                else:
                    sub["cancel_at"] = _int(params["cancel_at"], "cancel_at")
                    sub["canceled_at"] = self.now()
            if "pause_collection" in params:
                value = params["pause_collection"]
                if value in ("", None):
                    sub["pause_collection"] = None
                elif isinstance(value, dict):
                    behavior = _require(value, "behavior") if value.get("behavior") else None
                    if behavior is None:
                        raise StripeError.required("pause_collection[behavior]")
                    resumes = value.get("resumes_at")
                    sub["pause_collection"] = {
                        "behavior": str(behavior),
                        "resumes_at": _int(resumes, "pause_collection[resumes_at]")
                        if resumes
                        else None,
                    }
            if "trial_end" in params and params["trial_end"] not in (None, ""):
                if params["trial_end"] == "now":
                    if sub["status"] == "trialing":
                        self._end_trial(sub, self.now())
                else:
                    new_end = _int(params["trial_end"], "trial_end")
                    if sub["status"] == "trialing":
                        sub["trial_end"] = new_end
                        sub["billing_cycle_anchor"] = new_end
                        for item in sub["items"]["data"]:
                            self._refresh_item(sub, item)
            changes = _diff(before, sub)
            if changes:
                self._emit("customer.subscription.updated", sub, changes)
            if changes.get("status") == "trialing" and sub["status"] == "active":
                self._renew_locked(sub, "subscription_update")
            elif invoice_now:
                self._invoice_change_locked(sub)
            return _snapshot(sub)

    def _prorate_locked(self, sub: JSON, old_items: list[JSON], params: JSON) -> bool:
        """Prorations for changed items (plan changes layer); True: invoice them now."""
        return False

    def _invoice_change_locked(self, sub: JSON) -> None:
        """Invoice a change now (plan changes layer)."""

    def _renew_locked(self, sub: JSON, reason: str, *, decline: bool = False) -> bool:
        """Invoice the new period and charge it; an unpaid renewal makes it ``past_due``."""
        invoice = self._create_invoice_locked(sub, reason)
        paid = self._settle_invoice_locked(sub, invoice, attempt=True, decline=decline)
        if not paid and sub["collection_method"] == "charge_automatically":
            before = copy.deepcopy(sub)
            sub["status"] = "past_due"
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
        return paid

    def _end_trial(self, sub: JSON, at: int) -> None:
        sub["trial_end"] = at
        sub["billing_cycle_anchor"] = at
        sub["status"] = "active"
        for item in sub["items"]["data"]:
            self._period_no[item["id"]] = 0
            self._refresh_item(sub, item)

    def _update_items(self, sub: JSON, raw_items: Any) -> None:
        if not isinstance(raw_items, list):
            raise StripeError.invalid(
                "Invalid array", param="items", code="parameter_invalid_array"
            )
        data: list[JSON] = sub["items"]["data"]
        for index, raw in enumerate(raw_items):
            if not isinstance(raw, dict):
                raise StripeError.invalid("Invalid hash", param=f"items[{index}]")
            item_id = raw.get("id")
            if item_id:
                item = next((i for i in data if i["id"] == item_id), None)
                if item is None:
                    raise StripeError.missing(
                        "subscription item", str(item_id), f"items[{index}][id]"
                    )
                if raw.get("deleted") not in (None, "") and _bool(
                    raw["deleted"], f"items[{index}][deleted]"
                ):
                    data.remove(item)
                    self._item_index.pop(item["id"], None)
                    continue
                if raw.get("price"):
                    price = self._price_for_item(str(raw["price"]), f"items[{index}][price]")
                    item["price"] = _snapshot(price)
                if raw.get("quantity") not in (None, ""):
                    item["quantity"] = _int(raw["quantity"], f"items[{index}][quantity]")
                if "metadata" in raw:
                    item["metadata"] = _merge_metadata(item["metadata"], raw["metadata"])
                self._refresh_item(sub, item)
            else:
                if not raw.get("price"):
                    raise StripeError.required(f"items[{index}][price]")
                price = self._price_for_item(str(raw["price"]), f"items[{index}][price]")
                quantity = _int(raw.get("quantity", 1), f"items[{index}][quantity]")
                data.append(
                    self._new_item(
                        sub, price, quantity, raw.get("metadata"), self._current_period_number(sub)
                    )
                )
        if not data:
            raise StripeError.invalid(
                "A subscription must have at least one active item.", param="items"
            )
        sub["items"]["total_count"] = len(data)

    def _cancel_subscription_locked(
        self, sub: JSON, reason: str = "cancellation_requested"
    ) -> JSON:
        before = copy.deepcopy(sub)
        now = self.now()
        sub["status"] = "canceled"
        sub["ended_at"] = now
        sub["canceled_at"] = sub["canceled_at"] or now
        sub["cancel_at"] = sub["cancel_at"] if sub["cancel_at_period_end"] else None
        sub["cancellation_details"] = {**(sub["cancellation_details"] or {}), "reason": reason}
        self._emit("customer.subscription.deleted", sub, _diff(before, sub))
        return sub

    def cancel_subscription(self, sub_id: str, params: JSON | None = None) -> JSON:
        """DELETE /v1/subscriptions/{id}: cancel now."""
        params = params or {}
        with self.lock:
            sub = self._get("subscription", sub_id)
            if sub["status"] == "canceled":
                raise StripeError.invalid(
                    f"This subscription has already been canceled: {sub_id}",
                    param=None,
                    code="resource_missing",
                )
            if isinstance(params.get("cancellation_details"), dict):
                sub["cancellation_details"] = {
                    **(sub["cancellation_details"] or {}),
                    **params["cancellation_details"],
                }
            return _snapshot(self._cancel_subscription_locked(sub))

    def list_subscriptions(self, params: JSON) -> list[JSON]:
        """GET /v1/subscriptions filters: customer, price, status (incl. ``all``/``ended``)."""
        status = params.get("status")
        if status is not None and status not in SUBSCRIPTION_STATUSES | {"all", "ended"}:
            raise StripeError.invalid(f"Invalid status: {status}", param="status")
        customer, price = params.get("customer"), params.get("price")

        def keep(sub: JSON) -> bool:
            if customer and sub["customer"] != customer:
                return False
            if price and all(i["price"]["id"] != price for i in sub["items"]["data"]):
                return False
            if status == "all":
                return True
            if status == "ended":
                return sub["status"] in ("canceled", "incomplete_expired")
            if status:
                return bool(sub["status"] == status)
            return sub["status"] not in ("canceled", "incomplete_expired")

        return self.list_objects("subscription", keep)

    def retrieve_subscription_item(self, item_id: str) -> JSON:
        """GET /v1/subscription_items/{id}."""
        with self.lock:
            sub_id = self._item_index.get(item_id)
            sub = self._bucket("subscription").get(sub_id or "")
            for item in (sub or {}).get("items", {}).get("data", []):
                if item["id"] == item_id:
                    return _snapshot(item)
            raise StripeError.missing("subscription item", item_id)

    def list_subscription_items(self, sub_id: str) -> list[JSON]:
        """GET /v1/subscription_items?subscription=..."""
        with self.lock:
            sub = self._get("subscription", sub_id, "subscription")
            return _snapshot(sub["items"]["data"])
