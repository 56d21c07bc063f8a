"""pytest fixtures for the fake Stripe server.

Enable with ``pytest_plugins = ["kernia_billing.testing.pytest_plugin"]`` in a
``conftest.py``. Then:

* ``fake_stripe_server`` (session): one :class:`FakeStripe` on a random port.
* ``fake_stripe`` (function): the same server, reset, with the ``stripe`` SDK
  pointed at it and the API key set to :data:`FAKE_STRIPE_API_KEY`; the SDK
  settings are restored afterwards.
* ``stripe_settings`` (function): Django settings whose Stripe key is the fake's
  (``STRIPE_TEST_SECRET_KEY``, test mode), for dj-stripe and kernia_billing.
* ``webhook_endpoint`` (function, database): a dj-stripe ``WebhookEndpoint`` row and its
  twin on the fake sharing one secret; the fake's own delivery is off, so the test
  posts events itself with :func:`kernia_billing.testing.post_event`.

The fake accepts any key of the form ``sk_test_`` (or ``sk_live_``, ``rk_...``) followed by
at least 24 letters or digits, unless it was started with a list of ``api_keys``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .fake_stripe import FakeStripe, configure_stripe_sdk

__all__ = [
    "FAKE_STRIPE_API_KEY",
    "fake_stripe",
    "fake_stripe_server",
    "stripe_settings",
    "webhook_endpoint",
]

#: The secret key the ``fake_stripe`` fixture configures the SDK with.
FAKE_STRIPE_API_KEY = "sk_test_fakestripe0000000000000000"


@pytest.fixture(scope="session")
def fake_stripe_server() -> Iterator[FakeStripe]:
    """A fake Stripe server shared by the whole test session."""
    server = FakeStripe("127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_stripe(fake_stripe_server: FakeStripe) -> Iterator[FakeStripe]:
    """The session's fake Stripe, emptied, with the ``stripe`` SDK pointed at it."""
    fake_stripe_server.reset()
    fake_stripe_server.webhook_delivery = True
    with configure_stripe_sdk(fake_stripe_server.url, api_key=FAKE_STRIPE_API_KEY):
        yield fake_stripe_server
    fake_stripe_server.reset()


@pytest.fixture
def stripe_settings(settings: Any, fake_stripe: FakeStripe) -> Any:
    """Django settings whose Stripe key is the one the fake is serving with."""
    settings.STRIPE_TEST_SECRET_KEY = FAKE_STRIPE_API_KEY
    settings.STRIPE_LIVE_MODE = False
    return settings


@pytest.fixture
def webhook_endpoint(db: None, stripe_settings: Any, fake_stripe: FakeStripe) -> Any:
    """A dj-stripe ``WebhookEndpoint`` and its fake Stripe twin sharing one secret.

    Post signed events with ``post_event(client, webhook_endpoint, fake_stripe, event)``.
    """
    from djstripe.models import WebhookEndpoint

    data = fake_stripe.register_webhook_endpoint("http://testserver/stripe/webhook/")
    fake_stripe.webhook_delivery = False  # the test posts events itself
    endpoint = WebhookEndpoint.sync_from_stripe_data(
        data, api_key=stripe_settings.STRIPE_TEST_SECRET_KEY
    )
    endpoint.secret = data["secret"]
    endpoint.save()
    return endpoint
