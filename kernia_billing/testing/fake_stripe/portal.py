"""Billing portal configurations of the fake Stripe (``/v1/billing_portal/configurations``).

A configuration's ``features.subscription_update.products`` lists the products and
prices a customer may switch between in the hosted portal; portal sessions name
their configuration (else the account's default one).
"""

from __future__ import annotations

import copy
from typing import Any

from .core import JSON, StripeError, _bool, _diff, _merge_metadata, _snapshot, generate_id
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
