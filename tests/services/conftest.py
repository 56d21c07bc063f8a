from __future__ import annotations

import pytest

from kernia_billing.models import FeatureKind, ResetPeriod
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory


@pytest.fixture
def messages(db):
    """The seed's example feature."""
    return FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)


@pytest.fixture
def free_plan(db, messages):
    plan = PlanFactory(key="free", name="Free", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=100, reset_period=ResetPeriod.MONTH)
    return plan


@pytest.fixture
def user(db):
    return UserFactory()
