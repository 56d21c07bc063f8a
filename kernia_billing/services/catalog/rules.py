"""The mapping rules, one home each (the admin form, the services and the loader ask here).

- Only approved prices can be mapped to a plan (:func:`is_approved`, :func:`unapproved`;
  the admin offers :data:`MAPPABLE`).
- A price maps to at most one plan (:func:`mapped_plans`; the database's unique
  ``PlanPrice.price`` backs it).

Each door words its refusal in its own terms; the decision is made here.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Q

from ...models import CatalogPrice, Plan, PlanPrice, ReviewState

#: Prices the admin offers for mapping: approved and not deleted in Stripe.
MAPPABLE = Q(review_state=ReviewState.APPROVED, deleted_in_stripe=False)


def is_approved(price: CatalogPrice) -> bool:
    """Only approved prices can be mapped."""
    return price.review_state == ReviewState.APPROVED


def unapproved(prices: Iterable[CatalogPrice]) -> list[CatalogPrice]:
    """Of ``prices``, those not approved as stored now (the caller's rows may be stale)."""
    prices = list(prices)
    fresh = CatalogPrice.objects.in_bulk([p.pk for p in prices])
    return [p for p in prices if p.pk not in fresh or not is_approved(fresh[p.pk])]


def mapped_plans(
    price_ids: Iterable[int], *, excluding_mapping: int | None = None
) -> dict[int, Plan]:
    """The plan each price is mapped to now (a price maps to at most one plan)."""
    mappings = PlanPrice.objects.select_related("plan").filter(price_id__in=list(price_ids))
    if excluding_mapping is not None:
        mappings = mappings.exclude(pk=excluding_mapping)
    return {m.price_id: m.plan for m in mappings}
