"""The world the fuzzer calls into."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.core import signals
from django.db import close_old_connections
from rest_framework.authtoken.models import Token

from kernia_billing.models import FeatureKind, ResetPeriod
from tests.factories import (
    FeatureFactory,
    MembershipFactory,
    OrganizationFactory,
    PlanFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)


@pytest.fixture(autouse=True)
def keep_the_test_transaction():
    """Django's WSGI handler closes "old" connections around each request, which would
    close the test's transaction on PostgreSQL; its test client does what we do here."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@dataclass(frozen=True)
class FuzzWorld:
    headers: dict[str, str]


@pytest.fixture(params=["member", "staff"])
def fuzz_world(request, db, stripe_settings, fake_stripe) -> FuzzWorld:
    """A signed-in caller on a default plan with the seed's features: an organization
    member, or staff holding the manage permission (who reach the staff endpoints and
    may name any customer)."""
    messages = FeatureFactory(key="messages", kind=FeatureKind.METERED)
    seats = FeatureFactory(key="seats", kind=FeatureKind.SEATS)
    sso = FeatureFactory(key="sso", kind=FeatureKind.BOOLEAN)
    plan = PlanFactory(key="free", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=10000, reset_period=ResetPeriod.MONTH)
    PlanFeatureFactory(plan=plan, feature=seats, included=5, reset_period=ResetPeriod.NONE)
    PlanFeatureFactory(plan=plan, feature=sso, included=0, reset_period=ResetPeriod.NONE)
    user = StaffFactory() if request.param == "staff" else UserFactory()
    MembershipFactory(organization=OrganizationFactory(), user=user)
    token = Token.objects.create(user=user)
    return FuzzWorld(headers={"Authorization": f"Token {token.key}"})
