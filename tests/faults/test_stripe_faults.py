"""Stripe timing out during catalog sync, checkout and portal creation.

The fake Stripe holds the request longer than the SDK's timeout (a real socket
timeout in the real ``stripe`` SDK): the caller gets a clear error in the error
shape and local state is unchanged; the retry works once Stripe answers again.

Stripe answering 5xx is covered where each door is tested:
tests/api/test_catalog_api.py::test_sync_stripe_failure_is_a_502_in_the_error_shape,
tests/api/test_lifecycle_api.py::test_stripe_errors_are_502_and_leave_nothing_half_written
(checkout) and ::test_portal (portal). A webhook whose processing raises, then
succeeds on Stripe's retry with the right final state:
tests/webhooks/test_deliveries.py::test_handler_error_fails_the_webhook_then_the_retry_applies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe
from django.test import Client

from kernia_billing.models import BillingCustomer
from kernia_billing.testing import FakeStripe
from tests.api.test_entitlements_api import assert_error
from tests.catalog_support import seed_example_stripe, table_snapshot
from tests.factories import StaffFactory, UserFactory
from tests.lifecycle import Catalog, plans  # noqa: F401  (fixtures)

SDK_TIMEOUT = 0.3
STALL = 1.0  # how long the fake holds a request: well past the SDK's timeout

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def short_stripe_timeout() -> Iterator[None]:
    """The stripe SDK's own HTTP client with a short timeout (the default is 80 s)."""
    previous = stripe.default_http_client
    stripe.default_http_client = stripe.RequestsClient(timeout=SDK_TIMEOUT)
    yield
    stripe.default_http_client = previous


def stall(fake: FakeStripe, path: str, method: str | None = None) -> None:
    fake.inject_fault(path, method=method, status=None, delay=STALL)


def let_stalled_requests_finish() -> None:
    # The fake finishes a stalled request after STALL (Stripe did the work; the answer
    # was lost); wait for it so the retry sees what Stripe really holds.
    time.sleep(STALL + 0.2)


def post(client: Client, url: str, body: Any) -> Any:
    return client.post(url, body, content_type="application/json")


def assert_stripe_timeout(response: Any) -> None:
    error = assert_error(response, 502, "stripe_error")
    assert "timed out" in error["message"].lower() or "timeout" in error["message"].lower()


@pytest.fixture
def signed_in(client: Client, plans: Catalog) -> Client:  # noqa: F811
    client.force_login(UserFactory())
    return client


def test_catalog_sync_timing_out_changes_nothing(client, fake_stripe, stripe_settings):
    seed_example_stripe(fake_stripe)
    client.force_login(StaffFactory())
    assert post(client, "/api/auth/stripe/catalog/sync", {}).status_code == 200
    fake_stripe.create_product(name="Later")
    before = table_snapshot()

    stall(fake_stripe, "/v1/products")
    started = time.monotonic()
    response = post(client, "/api/auth/stripe/catalog/sync", {})

    assert time.monotonic() - started < STALL  # the SDK gave up; we did not wait for Stripe
    assert_stripe_timeout(response)
    assert table_snapshot() == before
    let_stalled_requests_finish()
    assert post(client, "/api/auth/stripe/catalog/sync", {}).json()["productsCreated"] == 1


@pytest.mark.parametrize("path", ["/v1/customers", "/v1/checkout/sessions"])
def test_checkout_timing_out_changes_nothing_and_the_retry_works(signed_in, fake_stripe, path):
    stall(fake_stripe, path, method="POST")
    assert_stripe_timeout(post(signed_in, "/api/auth/billing/checkout", {"plan": "pro"}))

    customer = BillingCustomer.objects.get()
    assert customer.plan is not None and customer.plan.key == "free"
    assert customer.stripe_subscription_id in ("", None)
    if path == "/v1/customers":
        assert customer.stripe_customer_id is None  # not linked to an answer we never got
    let_stalled_requests_finish()
    response = post(signed_in, "/api/auth/billing/checkout", {"plan": "pro"})
    assert response.status_code == 200, response.content
    # Stripe created the customer while we timed out: the retry (same idempotency key)
    # gets that one rather than a second customer.
    customers = stripe.Customer.list(limit=10).data
    assert len(customers) == 1
    assert BillingCustomer.objects.get().stripe_customer_id == customers[0].id


def test_portal_timing_out_changes_nothing(signed_in, fake_stripe):
    assert post(signed_in, "/api/auth/billing/checkout", {"plan": "pro"}).status_code == 200
    before = BillingCustomer.objects.values().get()

    stall(fake_stripe, "/v1/billing_portal", method="POST")
    assert_stripe_timeout(post(signed_in, "/api/auth/billing/portal", {}))

    assert BillingCustomer.objects.values().get() == before
    let_stalled_requests_finish()
    assert post(signed_in, "/api/auth/billing/portal", {}).status_code == 200
