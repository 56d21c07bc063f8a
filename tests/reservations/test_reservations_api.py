"""REST reservations: reserve, confirm with the actual, release, list; owner rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from kernia_billing.models import Reservation, ResetPeriod, UsageEvent
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory

pytestmark = pytest.mark.django_db

BASE = "/api/auth/billing/reservations"
CHECK = "/api/auth/billing/check"


@pytest.fixture
def user():
    tokens = FeatureFactory(key="tokens")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=tokens, included=5000, reset_period=ResetPeriod.MONTH)
    return UserFactory()


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def balance(api):
    return api.post(CHECK, {"feature": "tokens"}, format="json").json()["balance"]


@pytest.mark.clock_matrix
def test_reserve_shows_the_hold_then_confirm_settles_the_actual(user):
    api = client_for(user)
    created = api.post(BASE, {"feature": "tokens", "amount": 4000}, format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["status"], body["amount"], body["balance"]) == ("open", 4000, 1000)
    assert balance(api) == 1000
    listed = api.get(BASE).json()["results"]
    assert [r["id"] for r in listed] == [body["id"]]
    done = api.post(f"{BASE}/{body['id']}/confirm", {"actual": 1234}, format="json")
    assert done.status_code == 200, done.json()
    assert (done.json()["status"], done.json()["actual"], done.json()["balance"]) == (
        "confirmed",
        1234,
        3766,
    )
    again = api.post(f"{BASE}/{body['id']}/confirm", {"actual": 1234}, format="json")
    assert (again.status_code, again.json()["replayed"], again["Idempotent-Replayed"]) == (
        200,
        True,
        "true",
    )
    assert api.get(BASE).json()["results"] == []
    assert UsageEvent.objects.get().amount == 1234
    assert audit_ledger() == []


def test_release_and_the_closed_and_expired_errors(user):
    api = client_for(user)
    first = api.post(BASE, {"feature": "tokens", "amount": 10}, format="json").json()
    released = api.post(f"{BASE}/{first['id']}/release", {}, format="json")
    assert (released.status_code, released.json()["status"]) == (200, "released")
    assert api.post(f"{BASE}/{first['id']}/release", {}, format="json").status_code == 200
    closed = api.post(f"{BASE}/{first['id']}/confirm", {}, format="json")
    assert (closed.status_code, closed.json()["error"]["code"]) == (409, "reservation_closed")
    second = api.post(BASE, {"feature": "tokens", "amount": 10, "ttlSeconds": 5}, format="json")
    second_id = second.json()["id"]
    with time_machine.travel(timezone.now() + timedelta(seconds=6), tick=False):
        late = api.post(f"{BASE}/{second_id}/confirm", {"actual": 3}, format="json")
    assert (late.status_code, late.json()["error"]["code"]) == (409, "reservation_expired")
    assert balance(api) == 5000
    assert audit_ledger() == []


def test_a_reserve_beyond_the_balance_is_402_like_track(user):
    api = client_for(user)
    refused = api.post(BASE, {"feature": "tokens", "amount": 5001}, format="json")
    assert (refused.status_code, refused.json()["error"]["code"]) == (402, "insufficient_balance")
    hold = api.post(BASE, {"feature": "tokens", "amount": 5000}, format="json").json()
    over = api.post(f"{BASE}/{hold['id']}/confirm", {"actual": 5001}, format="json")
    assert (over.status_code, over.json()["error"]["code"]) == (402, "insufficient_balance")
    assert Reservation.objects.get().status == "open"


def test_idempotent_reserve_over_rest(user):
    api = client_for(user)
    body = {"feature": "tokens", "amount": 10, "idempotencyKey": "job-7"}
    first = api.post(BASE, body, format="json")
    again = api.post(BASE, body, format="json")
    assert (again.status_code, again.json()["id"], again.json()["replayed"]) == (
        201,
        first.json()["id"],
        True,
    )
    conflict = api.post(BASE, {**body, "amount": 11}, format="json")
    assert (conflict.status_code, conflict.json()["error"]["code"]) == (409, "idempotency_conflict")
    assert Reservation.objects.count() == 1


def test_another_owners_reservation_is_404(user):
    hold = client_for(user).post(BASE, {"feature": "tokens", "amount": 10}, format="json").json()
    other = client_for(UserFactory())
    for action in ("confirm", "release"):
        response = other.post(f"{BASE}/{hold['id']}/{action}", {}, format="json")
        assert (response.status_code, response.json()["error"]["code"]) == (
            404,
            "unknown_reservation",
        )
    assert other.get(BASE).json()["results"] == []
    assert Reservation.objects.get().status == "open"


@pytest.mark.parametrize(
    "body",
    [
        {"feature": "tokens"},
        {"feature": "tokens", "amount": 0},
        {"feature": "tokens", "amount": "5"},
        {"feature": "tokens", "amount": 10**40},
        {"feature": "tokens", "amount": 5, "ttlSeconds": 0},
        {"feature": "tokens", "amount": 5, "ttlSeconds": 10**9},
        {"feature": "tok\x00ens", "amount": 5},
        {"feature": "tokens", "amount": 5, "idempotencyKey": "a\x00"},
    ],
)
def test_hostile_reserve_input_is_400_and_holds_nothing(user, body):
    response = client_for(user).post(BASE, body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "invalid_request"
    assert not Reservation.objects.exists()


@pytest.mark.parametrize("path", ["99999999999999999999999/confirm", "abc/confirm", "1/nope"])
def test_unknown_reservation_paths_are_json_404(user, path):
    response = client_for(user).post(f"{BASE}/{path}", {}, format="json")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize("body", [{"actual": -1}, {"actual": 1.5}, {"actual": "3"}])
def test_hostile_confirm_input_is_400(user, body):
    api = client_for(user)
    hold = api.post(BASE, {"feature": "tokens", "amount": 10}, format="json").json()
    response = api.post(f"{BASE}/{hold['id']}/confirm", body, format="json")
    assert response.status_code == 400
    assert Reservation.objects.get().status == "open"


def test_anonymous_callers_are_refused():
    response = APIClient().post(BASE, {"feature": "tokens", "amount": 1}, format="json")
    assert response.status_code in (401, 403)
