"""Helpers shared by the catalog tests: seed the fake Stripe, snapshot the tables."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from django.db.models import Model

from kernia_billing.models import (
    CatalogPrice,
    CatalogProduct,
    Feature,
    Plan,
    PlanFeature,
    PlanPrice,
)

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "example_project"
EXAMPLE_CATALOG = EXAMPLE_DIR / "catalog.json"
EXAMPLE_STRIPE_CATALOG = EXAMPLE_DIR / "stripe_catalog.json"


def seed_example_stripe(fake: Any) -> dict[str, str]:
    """Pro (monthly+annual) and Team (per seat) in the fake; returns lookup key -> price id."""
    created = fake.seed(json.loads(EXAMPLE_STRIPE_CATALOG.read_text()))
    return {obj["lookup_key"]: obj["id"] for obj in created if obj["object"] == "price"}


def table_snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every row (all columns, timestamps included) of the tables a sync or load may touch."""
    from djstripe.models import Price, Product

    models: list[type[Model]] = [
        CatalogProduct,
        CatalogPrice,
        PlanPrice,
        Plan,
        PlanFeature,
        Feature,
        Product,
        Price,
    ]
    return {
        model._meta.label: list(model.objects.order_by("pk").values())  # type: ignore[attr-defined]
        for model in models
    }


def closed_port() -> int:
    """A local port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
