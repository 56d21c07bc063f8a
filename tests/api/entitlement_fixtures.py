"""Fixtures for the entitlement doors (REST, decorators): the seed's plan and callers.

Import with ``from tests.api.entitlement_fixtures import *`` (pytest picks the
fixtures up from the module namespace).
"""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from kernia_billing.models import FeatureKind, ResetPeriod
from tests.factories import (
    FeatureFactory,
    MembershipFactory,
    OrganizationFactory,
    PlanFactory,
    PlanFeatureFactory,
    UserFactory,
)

__all__ = [
    "anon",
    "api",
    "exports",
    "members",
    "messages",
    "org",
    "plan",
    "projects",
    "sso",
    "user",
]

# The documented response fields, shared by the behaviour and schema tests.
CHECK_FIELDS = {
    "allowed",
    "reason",
    "feature",
    "kind",
    "balance",
    "included",
    "usage",
    "unlimited",
    "allowOverage",
    "resetPeriod",
    "nextResetAt",
    "plan",
}
TRACK_FIELDS = {
    "eventId",
    "feature",
    "amount",
    "balance",
    "usage",
    "included",
    "unlimited",
    "replayed",
    "createdAt",
}

SEED = {
    "key": "messages",
    "kind": "metered",
    "included": 10000,
    "resetPeriod": "month",
    "allowOverage": False,
}


@pytest.fixture(autouse=True)
def _empty_throttle_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def messages(db):
    return FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)


@pytest.fixture
def sso(db):
    return FeatureFactory(key="sso", name="SSO", kind=FeatureKind.BOOLEAN)


@pytest.fixture
def members(db):
    return FeatureFactory(key="members", name="Members", kind=FeatureKind.SEATS)


@pytest.fixture
def projects(db):
    return FeatureFactory(key="projects", name="Projects", kind=FeatureKind.QUANTITY)


@pytest.fixture
def exports(db):
    """A feature no plan grants."""
    return FeatureFactory(key="exports", name="Exports", kind=FeatureKind.METERED)


@pytest.fixture
def plan(db, messages, sso, members, projects, exports):
    """The default plan with the seed's messages feature, SSO, 5 seats and 5 projects."""
    plan = PlanFactory(key="free", name="Free", is_default=True)
    PlanFeatureFactory(
        plan=plan,
        feature=messages,
        included=SEED["included"],
        reset_period=ResetPeriod.MONTH,
        allow_overage=SEED["allowOverage"],
    )
    PlanFeatureFactory(plan=plan, feature=sso, included=0, reset_period=ResetPeriod.NONE)
    PlanFeatureFactory(plan=plan, feature=members, included=5, reset_period=ResetPeriod.NONE)
    PlanFeatureFactory(plan=plan, feature=projects, included=5, reset_period=ResetPeriod.NONE)
    return plan


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def org(db, user):
    organization = OrganizationFactory()
    MembershipFactory(organization=organization, user=user)
    return organization


@pytest.fixture
def anon():
    return APIClient()


@pytest.fixture
def api(user):
    """The user signed in with DRF token authentication."""
    client = APIClient()
    token = Token.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client
