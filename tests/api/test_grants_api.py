"""REST grants: staff give credits naming the customer; owners list their own."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

import kernia_billing
from kernia_billing.models import ResetPeriod
from tests.factories import (
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

GRANTS = "/api/auth/billing/grants"
CHECK = "/api/auth/billing/check"


@pytest.fixture
def customer_user():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=20, reset_period=ResetPeriod.MONTH)
    return UserFactory()


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_staff_grant_names_the_customer_and_raises_the_balance(customer_user):
    staff = client_for(StaffFactory())
    response = staff.post(
        GRANTS,
        {"userId": customer_user.pk, "feature": "messages", "amount": 500, "reason": "outage"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["source"], body["remaining"], body["isExpired"]) == ("adjustment", 500, False)
    check = (
        client_for(customer_user)
        .post(CHECK, {"feature": "messages", "breakdown": True}, format="json")
        .json()
    )
    assert check["balance"] == 520
    assert [g["source"] for g in check["grants"]] == ["plan", "adjustment"]


def test_owners_cannot_grant_themselves(customer_user):
    response = client_for(customer_user).post(
        GRANTS, {"feature": "messages", "amount": 500}, format="json"
    )
    assert response.status_code == 403
    assert "error" in response.json()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"feature": "messages", "amount": "5"}, "amount"),
        ({"feature": "messages", "amount": 0}, "amount"),
        ({"feature": "messages", "amount": 5, "expiresAt": "soon"}, "expiresAt"),
        ({"feature": "messages", "amount": 5, "reason": "a\x00b"}, "reason"),
        ({"feature": "nope", "amount": 5}, "feature"),
    ],
)
def test_bad_grants_answer_4xx_in_the_error_shape(customer_user, body, field):
    response = client_for(StaffFactory()).post(
        GRANTS, {"userId": customer_user.pk, **body}, format="json"
    )
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert field in error["fields"] or error["code"] == "unknown_feature"


def test_owner_lists_own_grants_with_expired_ones_flagged(customer_user):
    now = timezone.now()
    kernia_billing.grant(customer_user, "messages", 10, expires_at=now + timedelta(hours=1))
    kernia_billing.grant(customer_user, "messages", 30)
    other = UserFactory()
    kernia_billing.grant(other, "messages", 99)
    with time_machine.travel(now + timedelta(hours=2)):
        response = client_for(customer_user).get(GRANTS, {"feature": "messages"})
    assert response.status_code == 200
    results = response.json()["results"]
    assert sorted((g["amount"], g["isExpired"]) for g in results) == [(10, True), (30, False)]
