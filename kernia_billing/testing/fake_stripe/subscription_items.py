"""``/v1/subscription_items`` create, update and delete (add-ons) of the fake Stripe.

Each change emits ``customer.subscription.updated`` with the items' previous values,
as Stripe does. Refused as on Stripe: a one-time or inactive price, a price already on
the subscription, removing the last item, a canceled subscription. The fake creates no
proration invoice items for these changes (``proration_behavior`` is accepted).
"""

from __future__ import annotations

import copy

from .checkout import CheckoutStore
from .core import JSON, StripeError, _diff, _int, _require, _snapshot, template


class SubscriptionItemStore(CheckoutStore):
    """Subscription items as their own resource."""

    def _item_and_sub(self, item_id: str) -> tuple[JSON, JSON]:
        sub_id = self._item_index.get(item_id)
        sub = self._bucket("subscription").get(sub_id or "")
        for item in (sub or {}).get("items", {}).get("data", []):
            if item["id"] == item_id:
                return item, sub  # type: ignore[return-value]
        raise StripeError.missing("subscription_item", item_id)

    def _changed(self, sub: JSON, before: JSON) -> None:
        changes = _diff(before, sub)
        if changes:
            self._emit("customer.subscription.updated", sub, changes)

    def create_subscription_item(self, params: JSON) -> JSON:
        """POST /v1/subscription_items."""
        sub_id = str(_require(params, "subscription"))
        price_id = str(_require(params, "price"))
        with self.lock:
            sub = self._live_subscription(sub_id)
            self._price_for_item(price_id, "price")
            if any(i["price"]["id"] == price_id for i in sub["items"]["data"]):
                raise StripeError.invalid(
                    f"Cannot add multiple subscription items with the same plan: {price_id}",
                    param="price",
                )
            quantity = _int(params.get("quantity", 1), "quantity")
            if quantity < 0:
                raise StripeError.invalid(
                    "This value must be greater than or equal to 0.", param="quantity"
                )
            before = copy.deepcopy(sub)
            raw: JSON = {"price": price_id, "quantity": quantity}
            if "metadata" in params:
                raw["metadata"] = params["metadata"]
            self._update_items(sub, [raw])
            item = sub["items"]["data"][-1]
            self._changed(sub, before)
            return _snapshot(item)

    def update_subscription_item(self, item_id: str, params: JSON) -> JSON:
        """POST /v1/subscription_items/{id}: quantity, price, metadata."""
        with self.lock:
            _item, sub = self._item_and_sub(item_id)
            self._live_subscription(sub["id"])
            if (
                params.get("quantity") not in (None, "")
                and _int(params["quantity"], "quantity") < 0
            ):
                raise StripeError.invalid(
                    "This value must be greater than or equal to 0.", param="quantity"
                )
            price_id = params.get("price")
            if price_id and any(
                i["price"]["id"] == price_id and i["id"] != item_id for i in sub["items"]["data"]
            ):
                raise StripeError.invalid(
                    f"Cannot add multiple subscription items with the same plan: {price_id}",
                    param="price",
                )
            before = copy.deepcopy(sub)
            raw: JSON = {"id": item_id}
            for key in ("price", "quantity", "metadata"):
                if key in params:
                    raw[key] = params[key]
            self._update_items(sub, [raw])
            self._changed(sub, before)
            return _snapshot(next(i for i in sub["items"]["data"] if i["id"] == item_id))

    def delete_subscription_item(self, item_id: str, params: JSON | None = None) -> JSON:
        """DELETE /v1/subscription_items/{id}."""
        with self.lock:
            _item, sub = self._item_and_sub(item_id)
            self._live_subscription(sub["id"])
            if len(sub["items"]["data"]) == 1:
                raise StripeError.invalid(
                    "A subscription must have at least one active item. If you want to cancel "
                    "the subscription, use the subscription cancel endpoint.",
                    param=None,
                )
            before = copy.deepcopy(sub)
            self._update_items(sub, [{"id": item_id, "deleted": "true"}])
            self._changed(sub, before)
            deleted = template("deleted_subscription_item")
            deleted.update(id=item_id)
            return deleted
