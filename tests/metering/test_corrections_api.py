"""REST usage corrections: staff name the customer; billed overage is given back once."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from kernia_billing import track
from kernia_billing.models import UsageCorrection
from kernia_billing.services.metering.sender import send_pending
from tests.factories import StaffFactory, UserFactory

ADJUST = "/api/auth/billing/usage/adjust"


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_staff_give_usage_back_and_the_overage_is_cancelled(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 130)
    send_pending()
    staff = StaffFactory()
    body = {
        "customerId": customer.pk,
        "feature": "messages",
        "amount": -30,
        "reason": "duplicate import",
        "idempotencyKey": "fix-1",
    }
    response = client_for(staff).post(ADJUST, body, format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert (data["amount"], data["balance"], data["usage"]) == (-30, 0, 100)
    assert (data["cancelledUnits"], data["creditedUnits"], data["replayed"]) == (30, 0, False)
    assert metered.stripe_total(customer) == 0
    assert UsageCorrection.objects.get().adjusted_by == staff
    again = client_for(staff).post(ADJUST, body, format="json")
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["id"] == data["id"]


def test_owners_may_not_correct_their_own_usage(metered):
    customer = metered.customer()
    response = client_for(customer.owner).post(
        ADJUST, {"feature": "messages", "amount": -1, "reason": "mine"}, format="json"
    )
    assert response.status_code == 403
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"feature": "messages", "amount": -1, "reason": "r"}, 400, "customerId"),
        ({"amount": -1, "reason": "r"}, 400, "feature"),
        ({"feature": "messages", "amount": "-1", "reason": "r"}, 400, "amount"),
        ({"feature": "messages", "amount": 0, "reason": "r"}, 400, "amount"),
        ({"feature": "messages", "amount": 10**40, "reason": "r"}, 400, "amount"),
        ({"feature": "messages", "amount": -1}, 400, "reason"),
        ({"feature": "messages", "amount": -1, "reason": "a\x00b"}, 400, "reason"),
        ({"feature": "messages", "amount": -1000, "reason": "r"}, 409, "givable"),
        ({"feature": "nope", "amount": -1, "reason": "r"}, 404, "feature"),
    ],
)
def test_bad_corrections_answer_4xx_in_the_error_shape(metered, body, status, field):
    customer = metered.customer()
    track(customer.owner, "messages", 10)
    if field != "customerId":
        body = {"customerId": customer.pk, **body}
    response = client_for(StaffFactory()).post(ADJUST, body, format="json")
    assert response.status_code == status, response.content
    assert field in response.json()["error"].get("fields", {})
    assert UsageCorrection.objects.count() == 0


def test_an_unknown_customer_is_a_404(metered):
    response = client_for(StaffFactory()).post(
        ADJUST,
        {"userId": UserFactory().pk + 1000, "feature": "messages", "amount": -1, "reason": "r"},
        format="json",
    )
    assert response.status_code == 404
