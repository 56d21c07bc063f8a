"""Shared fixtures. The fake Stripe API comes from the package's own pytest plugin."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import time_machine
from django.db import connection

from tests.clock import CLOCK_DATES

pytest_plugins = ["kernia_billing.testing.pytest_plugin"]


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


@pytest.fixture
def stripe_settings(settings, fake_stripe):
    """Django settings whose Stripe key is the one the fake is serving with."""
    from kernia_billing.testing.pytest_plugin import FAKE_STRIPE_API_KEY

    settings.STRIPE_TEST_SECRET_KEY = FAKE_STRIPE_API_KEY
    settings.STRIPE_LIVE_MODE = False
    return settings


@pytest.fixture
def webhook_endpoint(db, stripe_settings, fake_stripe):
    """A dj-stripe WebhookEndpoint row and its fake Stripe twin sharing one secret.

    Returns the dj-stripe row; POST signed events to ``webhook_url(endpoint)``.
    """
    from djstripe.models import WebhookEndpoint

    data = fake_stripe.register_webhook_endpoint("http://testserver/stripe/webhook/")
    fake_stripe.webhook_delivery = False  # tests post events themselves
    endpoint = WebhookEndpoint.sync_from_stripe_data(
        data, api_key=stripe_settings.STRIPE_TEST_SECRET_KEY
    )
    endpoint.secret = data["secret"]
    endpoint.save()
    return endpoint


def webhook_url(endpoint) -> str:
    from django.urls import reverse

    return reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})


def post_event(client, endpoint, fake_stripe, event, *, secret=None, timestamp=None):
    """POST a fake Stripe event, signed as Stripe signs it, to dj-stripe's endpoint."""
    body, headers = fake_stripe.sign_webhook(
        event, secret=secret or endpoint.secret, timestamp=timestamp
    )
    return client.post(
        webhook_url(endpoint),
        body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"],
    )
