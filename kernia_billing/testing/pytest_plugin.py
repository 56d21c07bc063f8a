"""pytest fixtures for the fake Stripe server.

Enable with ``pytest_plugins = ["kernia_billing.testing.pytest_plugin"]`` in a
``conftest.py``. Then:

* ``fake_stripe_server`` (session): one :class:`FakeStripe` on a random port.
* ``fake_stripe`` (function): the same server, reset, with the ``stripe`` SDK
  pointed at it and the API key set to :data:`FAKE_STRIPE_API_KEY`; the SDK
  settings are restored afterwards. A test fails if, during it, something sent
  the fake a request Stripe would refuse as malformed (an unknown or mistyped
  parameter, a bad ``expand[]``), even if the caller swallowed the 400; a test
  that sends such requests on purpose sets
  ``fake_stripe.allow_contract_violations = True``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fake_stripe import FakeStripe, configure_stripe_sdk

__all__ = ["FAKE_STRIPE_API_KEY", "check_contract_violations", "fake_stripe", "fake_stripe_server"]

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
    try:
        check_contract_violations(fake_stripe_server)
    finally:
        fake_stripe_server.reset()


def check_contract_violations(fake: FakeStripe) -> None:
    """Fail the test if ``fake`` was sent requests Stripe would refuse (unless allowed)."""
    violations = fake.contract_violations()
    if violations and not fake.allow_contract_violations:
        shown = "; ".join(
            f"{r.method} {r.path} ({r.contract_violation or 'refused'})" for r in violations
        )
        pytest.fail(f"requests Stripe would refuse: {shown}", pytrace=False)
