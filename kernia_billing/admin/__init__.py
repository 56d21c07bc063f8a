"""Django admin: the review queue of imported Stripe products/prices, plans and features,
billing customers with their entitlements and usage, reservations, and webhook health.

Importing the modules registers their ``ModelAdmin`` classes.
"""

from . import (  # noqa: F401
    addons,
    catalog,
    customers,
    grants,
    metering,
    plans,
    reservations,
    rollups,
    webhooks,
)
