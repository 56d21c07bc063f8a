"""The ``"addons"`` and ``"topups"`` sections of a catalog file (``kernia_load_catalog``).

::

    "addons": [{"key": "extra-seats", "name": "Extra seats", "resetPeriod": "billing",
                "features": [{"key": "seats", "amount": 5}], "prices": ["lookup:seats_5"]}],
    "topups": [{"key": "messages-1000", "name": "1,000 messages", "feature": "messages",
                "amount": 1000, "expiresAfterDays": 365, "price": "lookup:messages_1000"}]

An add-on in the file gets exactly the features and prices it lists. Prices go through
the same review gate as plans' (``--approve`` approves them); the models refuse a price
that already sells something else, or of the wrong type (one error each, nothing saved).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

from ...models import AddOn, AddOnFeature, AddOnPrice, CatalogPrice, Feature, TopUpPack
from . import rules
from .document import _Errors, _resolve_price, _typed

ADDON_KEYS = {"key", "name", "description", "resetPeriod", "active", "features", "prices"}
TOPUP_KEYS = {"key", "name", "feature", "amount", "expiresAfterDays", "active", "price"}


@dataclass
class Sections:
    addons: list[tuple[dict[str, Any], list[tuple[str, int]], list[CatalogPrice]]] = field(
        default_factory=list
    )
    topups: list[tuple[dict[str, Any], str, CatalogPrice | None]] = field(default_factory=list)
    unapproved: list[CatalogPrice] = field(default_factory=list)


def parse_sections(data: dict[str, Any], errors: _Errors) -> Sections:
    """Pass 1: shapes and price references; nothing is written."""
    found = Sections()
    addons = data.get("addons", [])
    if not _typed(addons, list, "addons", errors):
        addons = []
    for i, entry in enumerate(addons):
        if not _typed(entry, dict, f"addons[{i}]", errors) or not _key(entry, i, "addons", errors):
            continue
        where = f"add-on {entry['key']!r}"
        bad = set(entry) - ADDON_KEYS
        if bad:
            errors.add(where, f"unknown keys {sorted(bad)}")
        features: list[tuple[str, int]] = []
        for spec in entry.get("features", []) if isinstance(entry.get("features"), list) else []:
            amount = spec.get("amount") if isinstance(spec, dict) else None
            if not isinstance(spec, dict) or not isinstance(spec.get("key"), str):
                errors.add(where, "each feature needs a key and an amount")
            elif isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
                errors.add(f"{where} feature {spec['key']!r}", "amount must be an integer >= 1")
            else:
                features.append((spec["key"], amount))
        prices = [
            p
            for ref in (entry.get("prices") if isinstance(entry.get("prices"), list) else [])
            if (p := _resolve_price(ref, f"{where} price {ref!r}", errors)) is not None
        ]
        found.unapproved += [p for p in prices if not rules.is_approved(p)]
        fields = {
            "key": entry["key"],
            "name": entry.get("name") or entry["key"],
            "description": entry.get("description", ""),
            "reset_period": entry.get("resetPeriod", "billing"),
            "active": entry.get("active", True),
        }
        found.addons.append((fields, features, prices))
    topups = data.get("topups", [])
    if not _typed(topups, list, "topups", errors):
        topups = []
    for i, entry in enumerate(topups):
        if not _typed(entry, dict, f"topups[{i}]", errors) or not _key(entry, i, "topups", errors):
            continue
        where = f"top-up {entry['key']!r}"
        bad = set(entry) - TOPUP_KEYS
        if bad:
            errors.add(where, f"unknown keys {sorted(bad)}")
        price = _resolve_price(entry.get("price"), f"{where} price", errors)
        if price is not None and not rules.is_approved(price):
            found.unapproved.append(price)
        fields = {
            "key": entry["key"],
            "name": entry.get("name") or entry["key"],
            "amount": entry.get("amount"),
            "expires_after_days": entry.get("expiresAfterDays"),
            "active": entry.get("active", True),
        }
        found.topups.append((fields, str(entry.get("feature") or ""), price))
    return found


def _key(entry: dict[str, Any], i: int, section: str, errors: _Errors) -> bool:
    if not isinstance(entry.get("key"), str) or not entry["key"]:
        errors.add(f"{section}[{i}]", "key is required")
        return False
    return True


def save_sections(found: Sections, errors: _Errors, counts: dict[str, int]) -> None:
    """Pass 2, inside the loader's transaction: model validation errors are collected."""
    # ``*_loaded`` counts what was created or changed, so reloading an unchanged file
    # reports nothing (``LoadResult.changed`` is False).
    for fields, features, prices in found.addons:
        where = f"add-on {fields['key']!r}"
        addon = AddOn.objects.filter(key=fields["key"]).first() or AddOn()
        before = _addon_state(addon, fields) if addon.pk else None
        for name, value in fields.items():
            setattr(addon, name, value)
        if not _clean_save(addon, where, errors):
            continue
        AddOnFeature.objects.filter(addon=addon).exclude(
            feature__key__in=[k for k, _ in features]
        ).delete()
        for fkey, amount in features:
            feature = Feature.objects.filter(key=fkey).first()
            if feature is None:
                errors.add(f"{where} feature {fkey!r}", "unknown feature")
                continue
            row = AddOnFeature.objects.filter(addon=addon, feature=feature).first()
            row = row or AddOnFeature(addon=addon, feature=feature)
            row.amount = amount
            _clean_save(row, f"{where} feature {fkey!r}", errors)
        AddOnPrice.objects.filter(addon=addon).exclude(price__in=prices).delete()
        for price in prices:
            if not AddOnPrice.objects.filter(addon=addon, price=price).exists():
                price.refresh_from_db()
                _clean_save(AddOnPrice(addon=addon, price=price), f"{where} price", errors)
        if _addon_state(addon, fields) != before:
            counts["addons_loaded"] += 1
    for fields, feature_key, pack_price in found.topups:
        where = f"top-up {fields['key']!r}"
        feature = Feature.objects.filter(key=feature_key).first()
        if feature is None:
            errors.add(f"{where} feature", f"unknown feature {feature_key!r}")
            continue
        pack = TopUpPack.objects.filter(key=fields["key"]).first() or TopUpPack()
        before = _pack_state(pack, fields) if pack.pk else None
        for name, value in {**fields, "feature": feature}.items():
            setattr(pack, name, value)
        if pack_price is not None:
            pack_price.refresh_from_db()
            pack.price = pack_price
        else:
            pack.price_id = None
        if _clean_save(pack, where, errors) and _pack_state(pack, fields) != before:
            counts["topups_loaded"] += 1


def _addon_state(addon: AddOn, fields: dict[str, Any]) -> tuple[Any, ...]:
    return (
        tuple(getattr(addon, name) for name in sorted(fields)),
        sorted(AddOnFeature.objects.filter(addon=addon).values_list("feature_id", "amount")),
        sorted(AddOnPrice.objects.filter(addon=addon).values_list("price_id", flat=True)),
    )


def _pack_state(pack: TopUpPack, fields: dict[str, Any]) -> tuple[Any, ...]:
    return (
        tuple(getattr(pack, name) for name in sorted(fields)),
        pack.feature_id,
        pack.price_id,
    )


def _clean_save(obj: Any, where: str, errors: _Errors) -> bool:
    try:
        obj.full_clean()
    except ValidationError as exc:
        errors.add(where, exc)
        return False
    obj.save()
    return True
