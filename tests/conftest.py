"""Shared fixtures. The fake Stripe API, ``stripe_settings`` and ``webhook_endpoint`` come
from the package's own pytest plugin, as a downstream project would use them."""

from __future__ import annotations

import pytest
from django.db import connection

pytest_plugins = ["kernia_billing.testing.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.postgres`` tests are skipped unless the suite runs on PostgreSQL."""
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
