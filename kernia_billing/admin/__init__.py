"""Django admin: the review queue of imported Stripe products/prices, plans and features,
billing customers with their entitlements and usage, and webhook health.

Importing the modules registers their ``ModelAdmin`` classes.
"""

from . import addons, catalog, customers, grants, metering, plans, rollups, webhooks  # noqa: F401
