"""Cases the fuzzer found, kept as plain regression tests."""

from __future__ import annotations

import pytest

from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import USAGE, assert_error

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("param", ["to", "from", "limit", "offset", "daily", "feature"])
def test_a_blank_usage_filter_is_a_400_not_silently_ignored(api, plan, param):
    # The schema says date-time / integer / boolean / minLength 1; DRF used to drop "".
    error = assert_error(api.get(USAGE, {param: ""}), 400, "invalid_request")
    assert param in error["fields"]


def test_a_blank_organization_id_still_means_the_signed_in_user(api, plan):
    assert api.get(USAGE, {"organizationId": ""}).status_code == 200


def test_a_batch_event_without_feature_is_rejected(api, plan):
    response = api.post(
        "/api/auth/billing/track/batch",
        {"events": [{"amount": 1, "idempotencyKey": "k", "properties": None}]},
        format="json",
    )
    assert assert_error(response, 400, "invalid_request")["fields"]["events"]["0"]["feature"]


def test_an_unknown_checkout_session_is_a_client_error(api, plan, stripe_settings, fake_stripe):
    response = api.get("/api/auth/billing/checkout/return", {"session_id": "cs_nope"})
    assert 400 <= response.status_code < 500, response.content
