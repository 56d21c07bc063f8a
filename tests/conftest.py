"""Shared fixtures. The fake Stripe API, ``stripe_settings`` and ``webhook_endpoint`` come
from the package's own pytest plugin, as a downstream project would use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import time_machine
from django.db import connection

from tests import flush
from tests.clock import CLOCK_DATES

pytest_plugins = ["kernia_billing.testing.pytest_plugin"]

flush.install()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.clock_matrix`` tests run once per date in ``tests.clock``.

    ``@pytest.mark.clock_matrix("today", "feb29-leap")`` picks some of the dates (for
    slow tests).
    """
    marker = metafunc.definition.get_closest_marker("clock_matrix")
    if marker:
        dates = list(marker.args) or list(CLOCK_DATES)
        unknown = set(dates) - set(CLOCK_DATES)
        assert not unknown, f"unknown clock dates: {sorted(unknown)}"
        metafunc.fixturenames.append("clock_date")
        metafunc.parametrize("clock_date", dates, indirect=True)


@pytest.fixture
def clock_date(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _travel_to_clock_date(request: pytest.FixtureRequest) -> Iterator[None]:
    """Travel before any other function fixture builds data at "now"."""
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("clock_date") if callspec else None
    date = CLOCK_DATES[name] if name else None
    if date is None or date.moment is None:
        yield
        return
    settings = request.getfixturevalue("settings") if date.time_zone else None
    if settings is not None:
        settings.TIME_ZONE = date.time_zone
    with time_machine.travel(date.moment, tick=True):
        yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.postgres`` tests are skipped unless the suite runs on PostgreSQL."""
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)
