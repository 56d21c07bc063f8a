"""Which one-time price sells which top-up pack."""

from __future__ import annotations

from ...exceptions import InvalidRequest
from ...models import ReviewState, TopUpPack

MAX_QUANTITY = 1000


def sellable_pack(price_id: str) -> TopUpPack | None:
    """The active pack ``price_id`` sells, if it is an approved, active one-time price."""
    return (
        TopUpPack.objects.filter(
            active=True,
            price__stripe_id=price_id,
            price__review_state=ReviewState.APPROVED,
            price__active=True,
            price__deleted_in_stripe=False,
            price__price_type="one_time",
        )
        .select_related("price", "feature")
        .first()
    )


def pack_quantity(quantity: int | None) -> int:
    if quantity is None:
        return 1
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not (1 <= quantity <= MAX_QUANTITY)
    ):
        raise InvalidRequest(
            f"quantity must be an integer from 1 to {MAX_QUANTITY}.",
            fields={"quantity": f"From 1 to {MAX_QUANTITY}."},
        )
    return quantity
