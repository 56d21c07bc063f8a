"""Contract test: every Stripe call the project makes is one Stripe would accept.

The project's own code paths (catalog sync, customer creation, checkout and its
return, webhooks synced through dj-stripe, the billing portal, reconcile) run
against the fake; then the fake's request log is checked, request by request,
against Stripe's request contract (the SDK's generated parameter types), so a
call Stripe would refuse fails here even where the calling code swallowed the
error. (The ``fake_stripe`` fixture also fails any test whose requests broke
the contract.)
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from kernia_billing.testing import FakeStripe
from kernia_billing.testing.fake_stripe import RecordedRequest
from kernia_billing.testing.fake_stripe.contract import ContractError, validate_params
from kernia_billing.testing.fake_stripe.server import routes
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks, plans, webhooks

__all__ = ["plans", "webhooks"]


def contract_of(request: RecordedRequest) -> str | None:
    for method, pattern, params_type in routes():
        if method == request.method and re.match(pattern, request.path):
            return params_type or "unvalidated"
    return None


def refusals(requests: list[RecordedRequest]) -> list[str]:
    problems = []
    for request in requests:
        params_type = contract_of(request)
        if params_type is None:
            problems.append(f"{request.method} {request.path}: no such Stripe endpoint")
        elif params_type != "unvalidated":
            try:
                validate_params(params_type, request.params)
            except ContractError as exc:
                problems.append(f"{request.method} {request.path}: {exc.param}: {exc}")
        if request.status >= 400 and request.status != 404:
            problems.append(f"{request.method} {request.path}: answered {request.status}")
    return problems


@pytest.mark.django_db
def test_the_projects_stripe_calls_keep_to_stripes_contract(
    client: Client, fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks, settings: Any
) -> None:
    call_command("kernia_sync_catalog", stdout=io.StringIO())
    client.force_login(UserFactory())
    response = client.post(
        "/api/auth/billing/checkout", {"plan": "pro"}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    session_id = response.json()["sessionId"]
    fake_stripe.complete_checkout_session(session_id)
    assert client.get(
        "/api/auth/billing/checkout/return", {"session_id": session_id}
    ).status_code in (200, 302)
    webhooks.deliver_pending()
    response = client.post(
        "/api/auth/billing/portal",
        {"returnUrl": "http://testserver/account"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    call_command("kernia_reconcile", stdout=io.StringIO())

    requests = fake_stripe.requests
    touched = {(r.method, contract_of(r)) for r in requests}
    for expected in (
        ("GET", "ProductListParams"),
        ("GET", "PriceListParams"),
        ("POST", "CustomerCreateParams"),
        ("POST", "checkout.SessionCreateParams"),
        ("GET", "checkout.SessionRetrieveParams"),
        ("POST", "billing_portal.SessionCreateParams"),
    ):
        assert expected in touched, f"the flow no longer calls {expected}"
    assert refusals(requests) == []
    assert fake_stripe.contract_violations() == []
