"""Django admin: the review queue of imported Stripe products/prices, plans and features.

Importing the modules registers their ``ModelAdmin`` classes.
"""

from . import catalog, plans  # noqa: F401
