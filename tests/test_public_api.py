"""The Python API: ``kernia_billing.check / track / customer_state``."""

from __future__ import annotations

import pytest

import kernia_billing
from kernia_billing.exceptions import (
    InsufficientBalance,
    InvalidRequest,
    NotTrackable,
    UnknownFeature,
)
from kernia_billing.types import CheckResult, CustomerState, TrackResult
from tests.api.entitlement_fixtures import *  # noqa: F403

pytestmark = pytest.mark.django_db


def test_check_track_and_customer_state_from_the_package(plan, user, org):
    allowed = kernia_billing.check(user, "messages", required=1)
    assert isinstance(allowed, CheckResult)
    assert allowed.allowed and allowed.balance == 10000

    tracked = kernia_billing.track(user, "messages", 5, idempotency_key="k1")
    replay = kernia_billing.track(user, "messages", 5, idempotency_key="k1")
    assert isinstance(tracked, TrackResult)
    assert (tracked.balance, tracked.replayed) == (9995, False)
    assert (replay.event_id, replay.replayed) == (tracked.event_id, True)

    state = kernia_billing.customer_state(user)
    assert isinstance(state, CustomerState)
    assert state.plan == "free"
    messages = next(e for e in state.entitlements if e.feature == "messages")
    assert (messages.usage, messages.balance) == (5, 9995)

    assert kernia_billing.check(org, "messages").usage == 0


def test_python_api_raises_domain_errors(plan, user):
    with pytest.raises(InsufficientBalance):
        kernia_billing.track(user, "messages", 10001)
    with pytest.raises(NotTrackable):
        kernia_billing.track(user, "sso")
    with pytest.raises(UnknownFeature):
        kernia_billing.check(user, "nope")
    # Refused before the database (PostgreSQL cannot store NUL in text or jsonb).
    with pytest.raises(InvalidRequest):
        kernia_billing.track(user, "messages", properties={"note": "a\x00b"})
    with pytest.raises(InvalidRequest):
        kernia_billing.track(user, "messages", idempotency_key="k\x00")


def test_unknown_public_names_raise_attribute_error():
    with pytest.raises(AttributeError):
        kernia_billing.does_not_exist  # noqa: B018


def test_an_anonymous_user_or_an_unsaved_owner_is_a_billing_error(plan):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import AnonymousUser

    from kernia_billing.exceptions import AnonymousOwner, BillingError, InvalidOwner

    with pytest.raises(AnonymousOwner) as anonymous:
        kernia_billing.check(AnonymousUser(), "messages")
    assert isinstance(anonymous.value, BillingError)
    assert (anonymous.value.code, anonymous.value.status) == ("not_authenticated", 401)
    with pytest.raises(InvalidOwner):
        kernia_billing.track(get_user_model()(username="unsaved"), "messages", 1)
    with pytest.raises(InvalidOwner):
        kernia_billing.customer_state(None)
