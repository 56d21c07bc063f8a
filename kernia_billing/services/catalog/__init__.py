"""The catalog service: sync Stripe products/prices, review them, map them to plans, load a file.

Every door (``kernia_sync_catalog``, ``kernia_load_catalog``, ``POST stripe/catalog/sync``,
the admin's buttons and actions, the webhook receivers) calls these functions.

Sync lives in :mod:`.sync`, review and mapping in :mod:`.review` (its rules in
:mod:`.rules`), the catalog file in :mod:`.loader` (its shape in :mod:`.document`).
"""

from .loader import load_catalog
from .review import approve, ignore, map_prices_to_plan
from .sync import (
    apply_stripe_price,
    apply_stripe_product,
    sync_catalog,
)

__all__ = [
    "apply_stripe_price",
    "apply_stripe_product",
    "approve",
    "ignore",
    "load_catalog",
    "map_prices_to_plan",
    "sync_catalog",
]
