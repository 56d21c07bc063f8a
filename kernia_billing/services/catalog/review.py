"""Review: approve or ignore imported products/prices, and map approved prices to plans.

Approving or ignoring records who, when, and the fingerprint (a hash of the Stripe
fields that matter) it had. When Stripe later changes one of those fields, sync puts
the row back to ``pending``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from ...exceptions import CatalogError
from ...models import (
    CatalogPrice,
    CatalogProduct,
    Plan,
    PlanPrice,
    ReviewState,
)
from . import rules

# --- review ----------------------------------------------------------------------------

Reviewable = CatalogProduct | CatalogPrice


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
        current = rules.mapped_plans(p.pk for p in prices)
        unapproved = [p.stripe_id for p in rules.unapproved(prices)]
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
