"""The catalog service: sync Stripe products/prices, review them, map them to plans, load a file.

Every door (``kernia_sync_catalog``, ``kernia_load_catalog``, ``POST stripe/catalog/sync``,
the admin's buttons and actions, the webhook receivers) calls these functions.

Sync works in two phases so that a Stripe failure leaves every table as it was:
first everything is fetched from Stripe (all products and prices, active and
archived, page by page), then dj-stripe's mirror and our review rows are written
in one transaction. A row is only written when something it holds changed, so a
re-run against an unchanged Stripe account writes nothing.

Review: a new product/price is ``pending``. Approving or ignoring it records who,
when, and the fingerprint (a hash of the Stripe fields that matter) it had. When
Stripe later changes one of those fields, the row goes back to ``pending``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import stripe
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Model, Q
from django.utils import timezone

from ..exceptions import CatalogError, StripeUnavailable
from ..models import (
    CatalogPrice,
    CatalogProduct,
    Feature,
    FeatureKind,
    Plan,
    PlanFeature,
    PlanPrice,
    ResetPeriod,
    ReviewState,
)
from ..selectors import flagged_mapped_prices
from ..types import LoadResult, SyncResult
from . import stripe_state
from .entitlements import sync_plan_customers

Outcome = Literal["created", "updated", "unchanged"]
Progress = Callable[[str], None]

# Stripe allows at most 100 objects per list page.
PAGE_SIZE = 100


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
    """Hash of what a customer pays: product, amount, currency, recurrence, lookup key, active."""
    recurring = data.get("recurring") or {}
    return _digest(
        {
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
    data = stripe_state.plain(data)
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
    data = stripe_state.plain(data)
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


def _resolve_api_key(api_key: str | None, livemode: bool | None) -> str:
    from djstripe.settings import djstripe_settings

    return api_key or djstripe_settings.get_default_api_key(livemode)


def _resolve_livemode(livemode: bool | None) -> bool:
    from djstripe.settings import djstripe_settings

    return bool(djstripe_settings.STRIPE_LIVE_MODE if livemode is None else livemode)


def _fetch_all(
    resource: Any, *, api_key: str, progress: Progress | None, label: str
) -> list[dict[str, Any]]:
    """Every object of a list endpoint, active and archived, following pagination.

    Stripe's price list returns only active prices unless ``active=false`` is asked
    for, so both halves are requested explicitly (for products too, to be safe).
    """
    from djstripe.settings import djstripe_settings

    objects: dict[str, dict[str, Any]] = {}
    for active in (True, False):
        listing = resource.list(
            api_key=api_key,
            stripe_version=djstripe_settings.STRIPE_API_VERSION,
            active=active,
            limit=PAGE_SIZE,
        )
        for obj in listing.auto_paging_iter():
            data = stripe_state.plain(obj)
            objects[data["id"]] = data
            if progress and len(objects) % PAGE_SIZE == 0:
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
            model.sync_from_stripe_data(data, api_key=api_key)


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
    from djstripe.models import Price as StripePrice
    from djstripe.models import Product as StripeProduct

    livemode = _resolve_livemode(livemode)
    api_key = _resolve_api_key(api_key, livemode)
    try:
        products = _fetch_all(stripe.Product, api_key=api_key, progress=progress, label="products")
        prices = _fetch_all(stripe.Price, api_key=api_key, progress=progress, label="prices")
        if progress:
            progress("Writing…")
        with transaction.atomic():
            _mirror(StripeProduct, products, api_key=api_key)
            _mirror(StripePrice, prices, api_key=api_key)
            counts = _write_review_rows(products, prices, livemode=livemode)
    except stripe.StripeError as exc:
        raise StripeUnavailable(stripe_state.stripe_error_message(exc)) from exc
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


def pending_review_count() -> int:
    """Decisions that staff still owe: pending prices, and pending products with no
    pending price (a product with pending prices is settled by reviewing them, see
    :func:`_settle_products`). Rows deleted in Stripe need no decision."""
    pending = Q(review_state=ReviewState.PENDING, deleted_in_stripe=False)
    pending_prices = CatalogPrice.objects.filter(pending)
    return (
        pending_prices.count()
        + CatalogProduct.objects.filter(pending)
        .exclude(pk__in=pending_prices.filter(product__isnull=False).values("product_id"))
        .count()
    )


def _settle_products(product_ids: set[int], user: Any, now: Any) -> None:
    """A product is reviewed when its prices are: once none of its prices is pending,
    a pending product becomes approved (some price approved) or ignored (none)."""
    pending = Q(review_state=ReviewState.PENDING, deleted_in_stripe=False)
    products = CatalogProduct.objects.filter(pk__in=product_ids, review_state=ReviewState.PENDING)
    for product in products.exclude(prices__in=CatalogPrice.objects.filter(pending)):
        approved = product.prices.filter(review_state=ReviewState.APPROVED).exists()
        CatalogProduct.objects.filter(pk=product.pk, review_state=ReviewState.PENDING).update(
            review_state=ReviewState.APPROVED if approved else ReviewState.IGNORED,
            reviewed_by=user,
            reviewed_at=now,
            reviewed_fingerprint=product.fingerprint,
        )


# --- review ----------------------------------------------------------------------------

Reviewable = CatalogProduct | CatalogPrice


def _review(objects: Iterable[Reviewable], state: str, user: Any) -> int:
    now = timezone.now()
    reviewer = user if getattr(user, "pk", None) else None
    count = 0
    products: set[int] = set()
    with transaction.atomic():
        for obj in objects:
            type(obj).objects.filter(pk=obj.pk).update(
                review_state=state,
                reviewed_by=reviewer,
                reviewed_at=now,
                reviewed_fingerprint=obj.fingerprint,
            )
            if isinstance(obj, CatalogPrice) and obj.product_id:
                products.add(obj.product_id)
            count += 1
        _settle_products(products, reviewer, now)
    return count


def approve(objects: Iterable[Reviewable], user: Any = None) -> int:
    """Approve imported products/prices as they are now; returns how many."""
    return _review(objects, ReviewState.APPROVED, user)


def ignore(objects: Iterable[Reviewable], user: Any = None) -> int:
    """Mark imported products/prices as not used by the app; mapped prices are refused."""
    objects = list(objects)
    mapped = [
        o.stripe_id
        for o in objects
        if isinstance(o, CatalogPrice) and PlanPrice.objects.filter(price=o).exists()
    ]
    if mapped:
        raise CatalogError(
            f"Mapped prices cannot be ignored; unmap them from their plan first: "
            f"{', '.join(mapped)}.",
            fields={"prices": mapped},
        )
    return _review(objects, ReviewState.IGNORED, user)


def map_prices_to_plan(prices: Iterable[CatalogPrice], plan: Plan, user: Any = None) -> int:
    """Map approved prices to ``plan``; returns how many new mappings were made.

    Refuses (and writes nothing) when any price is not approved or is mapped to
    another plan.
    """
    prices = list(prices)
    with transaction.atomic():
        current = {
            m.price_id: m.plan
            for m in PlanPrice.objects.select_related("plan").filter(
                price_id__in=[p.pk for p in prices]
            )
        }
        unapproved = [
            p.stripe_id
            for p in prices
            if CatalogPrice.objects.filter(pk=p.pk, review_state=ReviewState.APPROVED).count() == 0
        ]
        elsewhere = [
            f"{p.stripe_id} (plan {current[p.pk].key!r})"
            for p in prices
            if p.pk in current and current[p.pk].pk != plan.pk
        ]
        problems = []
        if unapproved:
            problems.append(f"not approved: {', '.join(unapproved)}")
        if elsewhere:
            problems.append(f"already mapped to another plan: {', '.join(elsewhere)}")
        if problems:
            raise CatalogError(
                f"Cannot map these prices to plan {plan.key!r}: " + "; ".join(problems) + ".",
                fields={"unapproved": unapproved, "mappedElsewhere": elsewhere},
            )
        created = 0
        for price in prices:
            if price.pk in current:
                continue
            try:
                with transaction.atomic():
                    PlanPrice.objects.create(plan=plan, price=price)
            except IntegrityError as exc:
                raise CatalogError(
                    f"Price {price.stripe_id} was just mapped to another plan; reload and retry."
                ) from exc
            created += 1
    return created


def resync_plan_customers(plans: Iterable[Plan]) -> int:
    """After a plan's features changed: bring its customers' entitlements in line."""
    return sync_plan_customers([plan.pk for plan in plans])


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
}
FEATURE_KEYS = {"key", "name", "kind", "unit", "description", "archived"}
PLAN_KEYS = {
    "key",
    "name",
    "description",
    "isDefault",
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


def load_catalog(
    data: Any, *, approve: bool = False, user: Any = None, dry_run: bool = False
) -> LoadResult:
    """Load features, plans, plan features and price mappings from a catalog document.

    The format is documented in ``kernia_load_catalog``. Plans in the document get
    exactly the features and prices it lists (others are removed from them); plans
    and features not in the document are left alone. Every problem is reported at
    once in a :class:`CatalogError`, and then nothing is written. Loading the same
    document twice changes nothing the second time.
    """
    errors = _Errors()
    if not isinstance(data, dict):
        raise CatalogError("The catalog must be a JSON object with 'features' and 'plans'.")
    unknown = set(data) - {"features", "plans"}
    if unknown:
        errors.add("catalog", f"unknown keys {sorted(unknown)}")
    feature_specs = _parse_features(data, errors)
    plans = data.get("plans", [])
    if not _typed(plans, list, "plans", errors):
        plans = []

    # Pass 1: shape, price references and review state; nothing is written.
    plan_specs: list[tuple[str, dict[str, Any], list[CatalogPrice], list[tuple[str, dict]]]] = []
    price_owner: dict[int, str] = {}
    to_approve: dict[int, CatalogPrice] = {}
    defaults: list[str] = []
    for i, entry in enumerate(plans):
        where = f"plans[{i}]"
        if not _typed(entry, dict, where, errors):
            continue
        key = entry.get("key")
        if not isinstance(key, str) or not key:
            errors.add(where, "key is required")
            continue
        where = f"plan {key!r}"
        if any(key == spec[0] for spec in plan_specs):
            errors.add(where, "listed twice")
            continue
        bad = set(entry) - PLAN_KEYS
        if bad:
            errors.add(where, f"unknown keys {sorted(bad)}")
        fields = {
            "name": entry.get("name") or key.title(),
            "description": entry.get("description", ""),
            "is_default": entry.get("isDefault", False),
            "active": entry.get("active", True),
            "display_order": entry.get("displayOrder", i),
        }
        for name, kind in (("is_default", bool), ("active", bool), ("display_order", int)):
            _typed(fields[name], kind, f"{where} {name}", errors)
        if fields["is_default"] is True:
            defaults.append(key)

        prices: list[CatalogPrice] = []
        refs = entry.get("prices", [])
        if _typed(refs, list, f"{where} prices", errors):
            for ref in refs:
                price = _resolve_price(ref, f"{where} price {ref!r}", errors)
                if price is None:
                    continue
                if price.pk in price_owner:
                    errors.add(
                        f"{where} price {ref!r}",
                        f"also listed by plan {price_owner[price.pk]!r}; a price maps to one plan",
                    )
                    continue
                price_owner[price.pk] = key
                prices.append(price)
                if price.review_state != ReviewState.APPROVED:
                    if approve:
                        to_approve[price.pk] = price
                    else:
                        errors.add(
                            f"{where} price {ref!r}",
                            f"Stripe price {price.stripe_id} is {price.review_state}, not approved;"
                            " approve it in the admin or pass --approve",
                        )

        plan_features: list[tuple[str, dict]] = []
        entries = entry.get("features", [])
        if _typed(entries, list, f"{where} features", errors):
            for j, pf in enumerate(entries):
                pf_where = f"{where} features[{j}]"
                if not _typed(pf, dict, pf_where, errors):
                    continue
                fkey = pf.get("key")
                if not isinstance(fkey, str) or not fkey:
                    errors.add(pf_where, "key is required")
                    continue
                pf_where = f"{where} feature {fkey!r}"
                bad = set(pf) - PLAN_FEATURE_KEYS
                if bad:
                    errors.add(pf_where, f"unknown keys {sorted(bad)}")
                if any(fkey == existing for existing, _ in plan_features):
                    errors.add(pf_where, "listed twice")
                    continue
                if "kind" in pf:
                    spec = feature_specs.get(fkey)
                    if spec is None:
                        feature_specs[fkey] = _FeatureSpec(
                            fkey,
                            {
                                "name": pf.get("name") or fkey.replace("-", " ").title(),
                                "kind": pf["kind"],
                            },
                        )
                    elif spec.fields.get("kind") != pf["kind"]:
                        errors.add(
                            pf_where, f"kind {pf['kind']!r} differs from {spec.fields['kind']!r}"
                        )
                pf_fields = {
                    "included": pf.get("included", 0),
                    "unlimited": pf.get("unlimited", False),
                    "reset_period": pf.get("resetPeriod", ResetPeriod.NONE),
                    "allow_overage": pf.get("allowOverage", False),
                    "included_from_quantity": pf.get("includedFromQuantity", False),
                }
                ok = True
                expected: tuple[tuple[str, type], ...] = (
                    ("included", int),
                    ("unlimited", bool),
                    ("reset_period", str),
                    ("allow_overage", bool),
                    ("included_from_quantity", bool),
                )
                for name, expected_type in expected:
                    ok = _typed(pf_fields[name], expected_type, f"{pf_where} {name}", errors) and ok
                if ok:
                    plan_features.append((fkey, pf_fields))
        plan_specs.append((key, fields, prices, plan_features))

    if len(defaults) > 1:
        errors.add("plans", f"only one plan can be the default, not {', '.join(defaults)}")
    listed = {spec[0] for spec in plan_specs}
    other_default = Plan.objects.filter(is_default=True).exclude(key__in=listed).first()
    if defaults and other_default:
        errors.add(
            f"plan {defaults[0]!r}",
            f"plan {other_default.key!r} is already the default; "
            "unset it or include it in the file with isDefault false",
        )
    for mapping in PlanPrice.objects.select_related("plan", "price").filter(
        price_id__in=list(price_owner)
    ):
        wanted = price_owner[mapping.price_id]
        if mapping.plan.key != wanted and mapping.plan.key not in listed:
            errors.add(
                f"plan {wanted!r} price {mapping.price.stripe_id!r}",
                f"already mapped to plan {mapping.plan.key!r}, which this file does not list",
            )
    for key, spec in feature_specs.items():
        if (
            spec.fields.get("kind") not in FeatureKind.values
            and not Feature.objects.filter(key=key).exists()
        ):
            errors.add(
                f"feature {key!r}",
                f"kind must be one of {', '.join(FeatureKind.values)}",
            )
    for key, _fields, _prices, pfs in plan_specs:
        for fkey, _ in pfs:
            if fkey not in feature_specs and not Feature.objects.filter(key=fkey).exists():
                errors.add(
                    f"plan {key!r} feature {fkey!r}",
                    "unknown feature; declare it under 'features' or give its 'kind'",
                )
    errors.raise_if_any()

    # Pass 2: write in one transaction; model validation errors roll everything back.
    counts = dict.fromkeys(
        (
            "features_created",
            "features_updated",
            "plans_created",
            "plans_updated",
            "plan_features_created",
            "plan_features_updated",
            "plan_features_removed",
            "prices_mapped",
            "prices_unmapped",
            "prices_approved",
        ),
        0,
    )
    changed_plans: list[Plan] = []
    try:
        with transaction.atomic():
            if to_approve:
                counts["prices_approved"] = _review(to_approve.values(), ReviewState.APPROVED, user)
            features: dict[str, Feature] = {}
            for key, spec in feature_specs.items():
                existing = Feature.objects.filter(key=key).first()
                fields = {k: v for k, v in spec.fields.items() if v is not None}
                if existing is not None and set(spec.fields) == {"name", "kind"}:
                    # Declared inline by a plan entry: only the kind is authoritative.
                    fields = {"kind": fields["kind"]}
                feature, outcome = _save(
                    Feature, existing, {"key": key, **fields}, f"feature {key!r}", errors
                )
                if feature is not None:
                    features[key] = feature  # type: ignore[assignment]
                    if outcome != "unchanged":
                        counts[f"features_{outcome}"] += 1
            # The file may move the default between its plans: the one-default
            # constraint needs the old default unset before the new one is saved.
            Plan.objects.filter(is_default=True, key__in=listed).exclude(key__in=defaults).update(
                is_default=False
            )
            for key, fields, prices, pfs in plan_specs:
                existing_plan = Plan.objects.filter(key=key).first()
                plan, outcome = _save(
                    Plan, existing_plan, {"key": key, **fields}, f"plan {key!r}", errors
                )
                if plan is None:
                    continue
                assert isinstance(plan, Plan)
                if outcome != "unchanged":
                    counts[f"plans_{outcome}"] += 1
                features_changed = _load_plan_features(plan, pfs, features, counts, errors)
                _load_plan_prices(plan, prices, counts)
                # A plan whose features, default flag or active flag changed: its
                # customers (and those of the default plan) follow.
                if features_changed or outcome != "unchanged":
                    changed_plans.append(plan)
            errors.raise_if_any()
            if changed_plans:
                resync_plan_customers(changed_plans)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return LoadResult(**counts, dry_run=dry_run)


class _DryRun(Exception):
    """Raised to roll back a dry run."""


def _save(
    model: type[Model], existing: Model | None, fields: dict[str, Any], where: str, errors: _Errors
) -> tuple[Model | None, Outcome]:
    obj = existing or model()
    changed = [name for name, value in fields.items() if getattr(obj, name, None) != value]
    if existing is not None and not changed:
        return obj, "unchanged"
    for name in changed:
        setattr(obj, name, fields[name])
    try:
        obj.full_clean()
    except ValidationError as exc:
        errors.add(where, exc)
        return None, "unchanged"
    obj.save()
    return obj, "updated" if existing is not None else "created"


def _load_plan_features(
    plan: Plan,
    entries: list[tuple[str, dict[str, Any]]],
    features: dict[str, Feature],
    counts: dict[str, int],
    errors: _Errors,
) -> bool:
    changed = False
    current = {pf.feature.key: pf for pf in plan.plan_features.select_related("feature")}
    for fkey, fields in entries:
        feature = features.get(fkey) or Feature.objects.filter(key=fkey).first()
        if feature is None:
            continue  # its own error was reported
        existing = current.pop(fkey, None)
        _, outcome = _save(
            PlanFeature,
            existing,
            {"plan": plan, "feature": feature, **fields},
            f"plan {plan.key!r} feature {fkey!r}",
            errors,
        )
        if outcome != "unchanged":
            counts[f"plan_features_{outcome}"] += 1
            changed = True
    for stale in current.values():
        stale.delete()
        counts["plan_features_removed"] += 1
        changed = True
    return changed


def _load_plan_prices(plan: Plan, prices: list[CatalogPrice], counts: dict[str, int]) -> None:
    wanted = {p.pk for p in prices}
    removed, _ = PlanPrice.objects.filter(plan=plan).exclude(price_id__in=wanted).delete()
    counts["prices_unmapped"] += removed
    for price in prices:
        mapping = PlanPrice.objects.filter(price=price).first()
        if mapping is None:
            PlanPrice.objects.create(plan=plan, price=price)
            counts["prices_mapped"] += 1
        elif mapping.plan_id != plan.pk:
            # Moving between two plans of this file.
            mapping.plan = plan
            mapping.save(update_fields=["plan"])
            counts["prices_mapped"] += 1
