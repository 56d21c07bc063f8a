"""Catalog sync: Stripe products and prices into dj-stripe's mirror and the review rows.

Sync works in two phases so that a Stripe failure leaves every table as it was:
first everything is fetched from Stripe (all products and prices, active and
archived, page by page), then dj-stripe's mirror and our review rows are written
in one transaction. A row is only written when something it holds changed, so a
re-run against an unchanged Stripe account writes nothing. A webhook upserts one
object the same way (:func:`apply_stripe_product`, :func:`apply_stripe_price`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from django.db import IntegrityError, transaction
from django.utils import timezone
from djstripe.models import Price as StripePrice
from djstripe.models import Product as StripeProduct

from ...models import (
    CatalogPrice,
    CatalogProduct,
    ReviewState,
)
from ...selectors import flagged_mapped_prices, pending_review_count
from ...types import SyncResult
from .. import stripe_gateway, stripe_state
from ..metering.catalog import fetch_meters, write_meter_rows

Outcome = Literal["created", "updated", "unchanged"]
Progress = Callable[[str], None]


# --- fingerprints ----------------------------------------------------------------------


def _digest(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def product_fingerprint(data: Mapping[str, Any]) -> str:
    """Hash of the product fields a reviewer looked at: name, description, active."""
    return _digest(
        {
            "name": data.get("name") or "",
            "description": data.get("description") or "",
            "active": bool(data.get("active", True)),
        }
    )


def price_fingerprint(data: Mapping[str, Any]) -> str:
    """Hash of what a customer pays: product, amount, currency, recurrence, lookup key, active
    (and the meter of a metered price)."""
    recurring = data.get("recurring") or {}
    meter = {"meter": recurring["meter"]} if recurring.get("meter") else {}
    return _digest(
        {
            **meter,
            "product": stripe_state.stripe_id(data.get("product")),
            "currency": data.get("currency") or "",
            "unit_amount": data.get("unit_amount"),
            "unit_amount_decimal": str(data.get("unit_amount_decimal") or ""),
            "billing_scheme": data.get("billing_scheme") or "",
            "type": data.get("type") or "",
            "interval": recurring.get("interval") or "",
            "interval_count": recurring.get("interval_count") or 1,
            "usage_type": recurring.get("usage_type") or "",
            "lookup_key": data.get("lookup_key") or "",
            "active": bool(data.get("active", True)),
        }
    )


# --- single-object upserts (sync and webhooks) -----------------------------------------


def _product_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": (data.get("name") or "")[:500],
        "description": data.get("description") or "",
        "active": bool(data.get("active", True)),
        "livemode": bool(data.get("livemode", False)),
        "fingerprint": product_fingerprint(data),
    }


def _price_columns(data: Mapping[str, Any]) -> dict[str, Any]:
    recurring = data.get("recurring") or {}
    return {
        "stripe_product_id": stripe_state.stripe_id(data.get("product")),
        "nickname": (data.get("nickname") or "")[:250],
        "lookup_key": (data.get("lookup_key") or "")[:250],
        "currency": (data.get("currency") or "")[:3],
        "unit_amount": data.get("unit_amount"),
        "recurring_interval": recurring.get("interval") or "",
        "recurring_interval_count": recurring.get("interval_count") or 1,
        "usage_type": recurring.get("usage_type") or "",
        "stripe_meter_id": recurring.get("meter") or "",
        "price_type": data.get("type") or "",
        "active": bool(data.get("active", True)),
        "livemode": bool(data.get("livemode", False)),
        "fingerprint": price_fingerprint(data),
    }


def _upsert(
    model: type[CatalogProduct] | type[CatalogPrice],
    row: CatalogProduct | CatalogPrice | None,
    stripe_id: str,
    columns: dict[str, Any],
    *,
    deleted: bool,
    now: datetime,
) -> tuple[CatalogProduct | CatalogPrice, Outcome]:
    """Create or update one review row; write only what changed."""
    if deleted:
        # A deleted object keeps the columns it had; only the flag changes.
        columns = {"deleted_in_stripe": True, "active": False}
    else:
        columns = {**columns, "deleted_in_stripe": False}
    if row is None:
        row = model(stripe_id=stripe_id, review_state=ReviewState.PENDING, synced_at=now)
        for name, value in columns.items():
            setattr(row, name, value)
        try:
            with transaction.atomic():
                row.save(force_insert=True)
            return row, "created"
        except IntegrityError:
            # A concurrent webhook created it first: update that row instead.
            row = model.objects.select_for_update().get(stripe_id=stripe_id)
    changed = [name for name, value in columns.items() if getattr(row, name) != value]
    if not changed:
        return row, "unchanged"
    for name in changed:
        setattr(row, name, columns[name])
    if (
        "fingerprint" in changed
        and row.review_state != ReviewState.PENDING
        and row.fingerprint != row.reviewed_fingerprint
    ):
        # Stripe changed what was reviewed: review it again.
        row.review_state = ReviewState.PENDING
        changed.append("review_state")
    row.synced_at = now
    row.save(update_fields=[*changed, "synced_at"])
    return row, "updated"


def _link_orphan_prices(product: CatalogProduct) -> None:
    """Prices that arrived before their product (webhook order) get linked to it."""
    CatalogPrice.objects.filter(stripe_product_id=product.stripe_id, product__isnull=True).update(
        product=product
    )


def apply_stripe_product(
    data: Mapping[str, Any], *, deleted: bool = False, now: datetime | None = None
) -> Outcome:
    """Upsert the review row of one Stripe product (from a webhook or a sync)."""
    data = stripe_gateway.plain(data)
    with transaction.atomic():
        row = CatalogProduct.objects.select_for_update().filter(stripe_id=data["id"]).first()
        product, outcome = _upsert(
            CatalogProduct,
            row,
            data["id"],
            _product_columns(data),
            deleted=deleted,
            now=now or timezone.now(),
        )
        if outcome == "created":
            _link_orphan_prices(product)  # type: ignore[arg-type]
    return outcome


def apply_stripe_price(
    data: Mapping[str, Any], *, deleted: bool = False, now: datetime | None = None
) -> Outcome:
    """Upsert the review row of one Stripe price (from a webhook or a sync).

    A change to a reviewed field puts it back to ``pending``; an archived or deleted
    price that is mapped to a plan shows up in :func:`flagged_mapped_prices`.
    """
    data = stripe_gateway.plain(data)
    with transaction.atomic():
        row = CatalogPrice.objects.select_for_update().filter(stripe_id=data["id"]).first()
        columns = _price_columns(data)
        product = CatalogProduct.objects.filter(stripe_id=columns["stripe_product_id"]).first()
        columns["product_id"] = product.pk if product else None
        _, outcome = _upsert(
            CatalogPrice, row, data["id"], columns, deleted=deleted, now=now or timezone.now()
        )
    return outcome


# --- sync ------------------------------------------------------------------------------


def _fetch_all(
    resource: stripe_gateway.Resource, *, api_key: str, progress: Progress | None, label: str
) -> list[dict[str, Any]]:
    """Every object of a list endpoint, active and archived, following pagination.

    Stripe's price list returns only active prices unless ``active=false`` is asked
    for, so both halves are requested explicitly (for products too, to be safe).
    """
    objects: dict[str, dict[str, Any]] = {}
    for active in (True, False):
        for data in stripe_gateway.list_all(resource, api_key=api_key, active=active):
            objects[data["id"]] = data
            if progress and len(objects) % stripe_gateway.PAGE_SIZE == 0:
                progress(f"Fetched {len(objects)} {label}…")
    if progress:
        progress(f"Fetched {len(objects)} {label}.")
    return list(objects.values())


def _mirror(model: Any, objects: list[dict[str, Any]], *, api_key: str) -> None:
    """Keep dj-stripe's mirror current, skipping objects whose data did not change."""
    stored = dict(
        model.objects.filter(id__in=[o["id"] for o in objects]).values_list("id", "stripe_data")
    )
    for data in objects:
        if stored.get(data["id"]) != data:
            stripe_gateway.mirror(model, data, api_key=api_key)


def sync_catalog(
    *,
    api_key: str | None = None,
    livemode: bool | None = None,
    progress: Progress | None = None,
) -> SyncResult:
    """Pull every Stripe product and price into dj-stripe's mirror and the review tables.

    Raises :class:`StripeUnavailable` (and writes nothing) when Stripe cannot be
    reached or refuses the request.
    """
    livemode = stripe_gateway.project_livemode(livemode)
    api_key = stripe_gateway.api_key_for(api_key=api_key, livemode=livemode)
    products = _fetch_all("product", api_key=api_key, progress=progress, label="products")
    prices = _fetch_all("price", api_key=api_key, progress=progress, label="prices")
    meters = fetch_meters(api_key=api_key, progress=progress)
    if progress:
        progress("Writing…")
    with transaction.atomic():
        _mirror(StripeProduct, products, api_key=api_key)
        _mirror(StripePrice, prices, api_key=api_key)
        counts = _write_review_rows(products, prices, livemode=livemode)
        counts.update(write_meter_rows(meters, livemode=livemode))
    return SyncResult(
        **counts,
        pending_review=pending_review_count(),
        flagged=flagged_mapped_prices().count(),
    )


def _write_review_rows(
    products: list[dict[str, Any]], prices: list[dict[str, Any]], *, livemode: bool
) -> dict[str, int]:
    now = timezone.now()
    counts = {
        f"{kind}_{outcome}": 0
        for kind in ("products", "prices")
        for outcome in ("created", "updated", "unchanged")
    }

    product_rows = {p.stripe_id: p for p in CatalogProduct.objects.select_for_update()}
    for data in products:
        row, outcome = _upsert(
            CatalogProduct,
            product_rows.get(data["id"]),
            data["id"],
            _product_columns(data),
            deleted=False,
            now=now,
        )
        product_rows[data["id"]] = row  # type: ignore[assignment]
        counts[f"products_{outcome}"] += 1

    price_rows = {p.stripe_id: p for p in CatalogPrice.objects.select_for_update()}
    for data in prices:
        columns = _price_columns(data)
        product = product_rows.get(columns["stripe_product_id"])
        columns["product_id"] = product.pk if product else None
        row, outcome = _upsert(
            CatalogPrice, price_rows.get(data["id"]), data["id"], columns, deleted=False, now=now
        )
        counts[f"prices_{outcome}"] += 1

    # What Stripe no longer returns (in this mode) was deleted there.
    seen_products = {p["id"] for p in products}
    seen_prices = {p["id"] for p in prices}
    for kind, rows, seen, model in (
        ("products", product_rows, seen_products, CatalogProduct),
        ("prices", price_rows, seen_prices, CatalogPrice),
    ):
        for stripe_id, row in rows.items():
            if stripe_id in seen or row.livemode != livemode:
                continue
            _, outcome = _upsert(model, row, stripe_id, {}, deleted=True, now=now)
            if outcome == "updated":
                counts[f"{kind}_updated"] += 1
            else:
                counts[f"{kind}_unchanged"] += 1
    return counts
