"""Billing portal configurations of the fake Stripe (``/v1/billing_portal/configurations``).

A configuration's ``features.subscription_update.products`` lists the products and
prices a customer may switch between in the hosted portal; portal sessions name
their configuration (else the account's default one).
"""

from __future__ import annotations

import copy
from html import escape
from typing import Any

from .core import JSON, StripeError, _bool, _diff, _int, _merge_metadata, _snapshot, generate_id
from .schedules import ScheduleStore

DEFAULT_CONFIGURATION = "bpc_fakedefaultconfiguration"
_UPDATE_DEFAULTS = ("price", "quantity", "promotion_code")


class PortalStore(ScheduleStore):
    """Billing portal configurations."""

    def _default_features(self) -> JSON:
        return {
            "customer_update": {"allowed_updates": [], "enabled": False},
            "invoice_history": {"enabled": True},
            "payment_method_update": {"enabled": True},
            "subscription_cancel": {
                "cancellation_reason": {"enabled": False, "options": []},
                "enabled": True,
                "mode": "at_period_end",
                "proration_behavior": "none",
            },
            "subscription_update": {
                "billing_cycle_anchor": None,
                "default_allowed_updates": [],
                "enabled": False,
                "products": [],
                "proration_behavior": "create_prorations",
                "schedule_at_period_end": {"conditions": []},
                "trial_update_behavior": "end_trial",
            },
        }

    def _apply_features(self, config: JSON, features: Any) -> None:
        if not isinstance(features, dict):
            raise StripeError.invalid("Invalid hash", param="features")
        for name, value in features.items():
            if name not in config["features"] or not isinstance(value, dict):
                raise StripeError.invalid(
                    f"Received unknown parameter: features[{name}]", param=f"features[{name}]"
                )
            target = config["features"][name]
            for key, item in value.items():
                param = f"features[{name}][{key}]"
                if key == "enabled":
                    target[key] = _bool(item, param)
                elif name == "subscription_update" and key == "products":
                    target[key] = self._parse_products(item, param)
                elif name == "subscription_update" and key == "default_allowed_updates":
                    values = item if isinstance(item, list) else [] if item == "" else [item]
                    bad = [v for v in values if v not in _UPDATE_DEFAULTS]
                    if bad:
                        raise StripeError.invalid(f"Invalid {param}: {bad[0]}", param=param)
                    target[key] = list(values)
                else:
                    target[key] = copy.deepcopy(item)
        update = config["features"]["subscription_update"]
        if update["enabled"] and not update["products"]:
            raise StripeError.invalid(
                "You must specify at least one product when subscription_update is enabled.",
                param="features[subscription_update][products]",
            )

    def _parse_products(self, raw: Any, param: str) -> list[JSON]:
        if raw == "":
            return []
        if not isinstance(raw, list):
            raise StripeError.invalid("Invalid array", param=param, code="parameter_invalid_array")
        products = []
        for index, entry in enumerate(raw):
            where = f"{param}[{index}]"
            if not isinstance(entry, dict) or not entry.get("product"):
                raise StripeError.required(f"{where}[product]")
            product = self._get("product", str(entry["product"]), f"{where}[product]")
            prices = entry.get("prices") or []
            if not isinstance(prices, list) or not prices:
                raise StripeError.required(f"{where}[prices]")
            for price_id in prices:
                price = self._get("price", str(price_id), f"{where}[prices]")
                if price["product"] != product["id"]:
                    raise StripeError.invalid(
                        f"The price `{price_id}` does not belong to product `{product['id']}`.",
                        param=f"{where}[prices]",
                    )
                if price["type"] != "recurring" or not price["active"]:
                    raise StripeError.invalid(
                        f"The price `{price_id}` must be an active recurring price.",
                        param=f"{where}[prices]",
                    )
            products.append({"prices": [str(p) for p in prices], "product": product["id"]})
        return products

    def create_portal_configuration(self, params: JSON) -> JSON:
        """POST /v1/billing_portal/configurations."""
        with self.lock:
            now = self.now()
            config: JSON = {
                "id": generate_id("bpc_"),
                "object": "billing_portal.configuration",
                "active": True,
                "application": None,
                "business_profile": {
                    "headline": None,
                    "privacy_policy_url": None,
                    "terms_of_service_url": None,
                },
                "created": now,
                "default_return_url": params.get("default_return_url") or None,
                "features": self._default_features(),
                "is_default": False,
                "livemode": False,
                "login_page": {"enabled": False, "url": None},
                "metadata": _merge_metadata({}, params.get("metadata")),
                "name": params.get("name") or None,
                "updated": now,
            }
            if isinstance(params.get("business_profile"), dict):
                config["business_profile"].update(params["business_profile"])
            self._apply_features(config, params.get("features") or {})
            self._bucket("billing_portal.configuration")[config["id"]] = config
            self._emit("billing_portal.configuration.created", config)
            return _snapshot(config)

    def update_portal_configuration(self, config_id: str, params: JSON) -> JSON:
        """POST /v1/billing_portal/configurations/{id}."""
        with self.lock:
            config = self._get("billing_portal.configuration", config_id)
            before = copy.deepcopy(config)
            if "active" in params:
                config["active"] = _bool(params["active"], "active")
            if "metadata" in params:
                config["metadata"] = _merge_metadata(config["metadata"], params["metadata"])
            if "name" in params:
                config["name"] = params["name"] or None
            if "default_return_url" in params:
                config["default_return_url"] = params["default_return_url"] or None
            if "features" in params:
                self._apply_features(config, params["features"])
            config["updated"] = self.now()
            changes = _diff(before, config)
            changes.pop("updated", None)
            if changes:
                self._emit("billing_portal.configuration.updated", config, changes)
            return _snapshot(config)

    def portal_configuration(self, config_id: str) -> JSON | None:
        """The configuration a portal session uses (None: the account's default)."""
        with self.lock:
            config = self._bucket("billing_portal.configuration").get(config_id)
            return _snapshot(config) if config else None

    def create_portal_session(self, params: JSON) -> JSON:
        config_id = params.get("configuration")
        if config_id:
            with self.lock:
                config = self._get("billing_portal.configuration", str(config_id), "configuration")
                if not config["active"]:
                    raise StripeError.invalid(
                        "This configuration is inactive; portal sessions cannot use it.",
                        param="configuration",
                    )
        return super().create_portal_session(params)

    # ----------------------------------------------------------------- hosted portal

    def _session_update_feature(self, session: JSON) -> JSON | None:
        config = self._bucket("billing_portal.configuration").get(session["configuration"] or "")
        if config is None:
            return None
        update: JSON = config["features"]["subscription_update"]
        return update if update["enabled"] and update["products"] else None

    def portal_switch_forms(self, session_id: str) -> str:
        """HTML forms of the hosted portal: switch each live subscription's plan item to
        a price (and quantity) its configuration allows."""
        with self.lock:
            session = self._get("billing_portal.session", session_id)
            update = self._session_update_feature(session)
            if update is None:
                return ""
            allowed = [p for entry in update["products"] for p in entry["prices"]]
            forms = []
            for sub in self._bucket("subscription").values():
                if sub["customer"] != session["customer"] or sub["status"] in (
                    "canceled",
                    "incomplete_expired",
                ):
                    continue
                item = self._switchable_item(sub, allowed)
                options = "".join(
                    f"<option value='{escape(pid)}'"
                    + (" selected" if pid == item["price"]["id"] else "")
                    + f">{escape(self._price_label(pid))}</option>"
                    for pid in allowed
                )
                quantity = (
                    f"<input name='quantity' type='number' min='1' value='{item['quantity']}'>"
                    if "quantity" in update["default_allowed_updates"]
                    else ""
                )
                action = f"/portal/{escape(session_id)}/subscriptions/{escape(sub['id'])}/update"
                forms.append(
                    f"<form method='post' action='{action}'><select name='price'>{options}"
                    f"</select>{quantity}<button type='submit'>Update plan</button></form>"
                )
            return "<h2>Change plan</h2>" + "".join(forms) if forms else ""

    def _price_label(self, price_id: str) -> str:
        price = self._bucket("price").get(price_id) or {}
        amount = int(price.get("unit_amount") or 0) / 100
        interval = (price.get("recurring") or {}).get("interval", "")
        return f"{self._product_name(str(price.get('product')))} {amount:.2f}/{interval}"

    def _switchable_item(self, sub: JSON, allowed: list[str]) -> JSON:
        items: list[JSON] = sub["items"]["data"]
        return next((i for i in items if i["price"]["id"] in allowed), items[0])

    def portal_update_subscription(
        self, session_id: str, sub_id: str, *, price: str, quantity: str
    ) -> JSON:
        """The customer switched plan/quantity in the hosted portal (refused outside the
        session's configuration, as Stripe's portal offers nothing else)."""
        with self.lock:
            session = self._get("billing_portal.session", session_id)
            sub = self._get("subscription", sub_id)
            if sub["customer"] != session["customer"]:
                raise StripeError.missing("subscription", sub_id)
            update = self._session_update_feature(session)
            if update is None:
                raise StripeError.invalid("This portal configuration does not allow plan changes.")
            allowed = [p for entry in update["products"] for p in entry["prices"]]
            if price not in allowed:
                raise StripeError.invalid(f"The price `{price}` is not offered in this portal.")
            item = self._switchable_item(sub, allowed)
            change: JSON = {"id": item["id"], "price": price}
            if quantity not in ("", None):
                if "quantity" not in update["default_allowed_updates"]:
                    raise StripeError.invalid("This portal does not allow quantity changes.")
                amount = _int(quantity, "quantity")
                if amount < 1:
                    raise StripeError.invalid("Quantity must be at least 1.", param="quantity")
                change["quantity"] = amount
            return self.update_subscription(
                sub_id,
                {"items": [change], "proration_behavior": update["proration_behavior"]},
            )
