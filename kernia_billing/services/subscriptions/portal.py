"""The billing portal configuration kernia keeps in Stripe.

Its ``features.subscription_update.products`` lists exactly the mapped plans' approved,
active prices (:func:`~kernia_billing.selectors.offerable_prices`), grouped by product,
so Stripe's hosted portal lets customers switch (prices and quantities) only between
mapped plans. It is found by its metadata (``kernia_billing_managed``), so no row is
stored here; :func:`sync_portal_configuration` creates or updates it and is run by
``kernia_load_catalog``, ``kernia_sync_portal`` and before every portal session.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ...selectors import offerable_prices
from .. import stripe_gateway

MANAGED_KEY = "kernia_billing_managed"
FINGERPRINT_KEY = "kernia_billing_products"


@dataclass(frozen=True)
class PortalSync:
    configuration_id: str
    outcome: str  # created | updated | unchanged
    products: list[dict[str, Any]]


def desired_products() -> list[dict[str, Any]]:
    """``[{"product": prod, "prices": [price, ...]}]`` of every offerable price."""
    by_product: dict[str, list[str]] = {}
    rows = offerable_prices().values_list("product__stripe_id", "stripe_id").distinct()
    for product, price in sorted(rows):
        by_product.setdefault(str(product), []).append(str(price))
    return [{"product": p, "prices": prices} for p, prices in sorted(by_product.items())]


def _features(products: list[dict[str, Any]]) -> dict[str, Any]:
    update: dict[str, Any] = {"enabled": bool(products)}
    if products:
        update.update(
            default_allowed_updates=["price", "quantity"],
            products=products,
            proration_behavior="always_invoice",
        )
    return {
        "subscription_update": update,
        "subscription_cancel": {"enabled": True, "mode": "at_period_end"},
        "payment_method_update": {"enabled": True},
        "invoice_history": {"enabled": True},
    }


def _fingerprint(products: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(products, sort_keys=True).encode()).hexdigest()[:40]


def find_configuration(*, api_key: str | None = None) -> dict[str, Any] | None:
    for config in stripe_gateway.list_all(
        "billing_portal.configuration", api_key=api_key, active=True
    ):
        if (config.get("metadata") or {}).get(MANAGED_KEY):
            return config
    return None


def sync_portal_configuration(*, api_key: str | None = None) -> PortalSync:
    """Create or update kernia's portal configuration to list the offerable prices."""
    products = desired_products()
    fingerprint = _fingerprint(products)
    metadata = {MANAGED_KEY: "1", FINGERPRINT_KEY: fingerprint}
    existing = find_configuration(api_key=api_key)
    if existing is None:
        created = stripe_gateway.create(
            "billing_portal.configuration",
            api_key=api_key,
            idempotency_key=f"kernia-portal-configuration-{fingerprint}",
            features=_features(products),
            metadata=metadata,
        )
        return PortalSync(str(created["id"]), "created", products)
    if (existing.get("metadata") or {}).get(FINGERPRINT_KEY) == fingerprint:
        return PortalSync(str(existing["id"]), "unchanged", products)
    stripe_gateway.modify(
        "billing_portal.configuration",
        str(existing["id"]),
        api_key=api_key,
        idempotency_key=f"kernia-portal-configuration-{existing['id']}-{fingerprint}",
        features=_features(products),
        metadata=metadata,
    )
    return PortalSync(str(existing["id"]), "updated", products)
