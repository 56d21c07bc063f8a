"""The catalog document's shape: its keys, type checks, errors and price references."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from ...exceptions import CatalogError
from ...models import (
    CatalogPrice,
)

# --- loader ----------------------------------------------------------------------------

PLAN_FEATURE_KEYS = {
    "key",
    "kind",
    "name",
    "included",
    "unlimited",
    "resetPeriod",
    "allowOverage",
    "includedFromQuantity",
    "overagePrice",
    "rolloverMax",
    "rolloverExpiresAfter",
}
FEATURE_KEYS = {"key", "name", "kind", "unit", "description", "archived"}
PLAN_KEYS = {
    "key",
    "name",
    "description",
    "isDefault",
    "trialDays",
    "active",
    "displayOrder",
    "prices",
    "features",
}


class _Errors:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: Any) -> None:
        if isinstance(message, ValidationError):
            for field_name, messages in message.message_dict.items():
                label = "" if field_name == "__all__" else f"{field_name}: "
                for text in messages:
                    self.items.append(f"{where}: {label}{text}")
        else:
            self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise CatalogError(
                "The catalog file was not loaded (nothing was written):\n- "
                + "\n- ".join(self.items),
                fields={"errors": self.items},
            )


def _typed(value: Any, kind: type | tuple[type, ...], where: str, errors: _Errors) -> bool:
    if isinstance(value, bool) and kind is int:
        errors.add(where, "must be an integer")
        return False
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        errors.add(where, f"must be a {names}, got {type(value).__name__}")
        return False
    return True


@dataclass
class _FeatureSpec:
    key: str
    fields: dict[str, Any]


def _parse_features(data: Mapping[str, Any], errors: _Errors) -> dict[str, _FeatureSpec]:
    """Top-level features, plus any feature a plan entry declares with a ``kind``."""
    specs: dict[str, _FeatureSpec] = {}
    entries = data.get("features", [])
    if not _typed(entries, list, "features", errors):
        return specs
    for i, entry in enumerate(entries):
        where = f"features[{i}]"
        if not _typed(entry, dict, where, errors):
            continue
        unknown = set(entry) - FEATURE_KEYS
        if unknown:
            errors.add(where, f"unknown keys {sorted(unknown)}")
        key = entry.get("key")
        if not isinstance(key, str) or not key:
            errors.add(where, "key is required")
            continue
        if key in specs:
            errors.add(where, f"feature {key!r} is listed twice")
            continue
        fields = {
            "name": entry.get("name") or key.replace("-", " ").replace("_", " ").title(),
            "kind": entry.get("kind"),
            "unit": entry.get("unit", ""),
            "description": entry.get("description", ""),
            "archived": entry.get("archived", False),
        }
        specs[key] = _FeatureSpec(key, fields)
    return specs


def _resolve_price(ref: Any, where: str, errors: _Errors) -> CatalogPrice | None:
    if not isinstance(ref, str) or not ref:
        errors.add(where, 'must be a Stripe price id ("price_...") or "lookup:<lookup key>"')
        return None
    if ref.startswith("lookup:"):
        lookup_key = ref.removeprefix("lookup:")
        matches = list(
            CatalogPrice.objects.filter(lookup_key=lookup_key, deleted_in_stripe=False).order_by(
                "-active", "pk"
            )[:2]
        )
        if not matches:
            errors.add(
                where,
                f"no imported Stripe price has lookup key {lookup_key!r}; "
                "run kernia_sync_catalog first",
            )
            return None
        if len(matches) > 1 and matches[0].active == matches[1].active:
            errors.add(where, f"lookup key {lookup_key!r} matches several prices; use the id")
            return None
        return matches[0]
    price = CatalogPrice.objects.filter(stripe_id=ref).first()
    if price is None:
        errors.add(where, f"unknown Stripe price {ref!r}; run kernia_sync_catalog first")
        return None
    if price.deleted_in_stripe:
        errors.add(where, f"Stripe price {ref!r} was deleted in Stripe")
        return None
    return price
