"""The ledger audit plans without PostgreSQL's JIT, and gives the session its setting back."""

from __future__ import annotations

import pytest
from django.db import connection

import kernia_billing
from kernia_billing.models import FeatureKind
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, UserFactory


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_audit_that_fails_gives_the_session_its_jit_setting_back() -> None:
    """In autocommit the audit's ``jit = off`` commits at once: a failure (here the
    progress callback's, as with ``kernia_reconcile --progress | head``) must restore it,
    or every later statement of a long-lived worker plans without JIT."""
    plan = PlanFactory(key="jit", is_default=True)
    feature = FeatureFactory(key="messages", kind=FeatureKind.METERED)
    PlanFeatureFactory(plan=plan, feature=feature, included=100)
    kernia_billing.track(UserFactory(), "messages", 1)
    with connection.cursor() as cursor:
        cursor.execute("SET jit = on")

    def progress(*_: object) -> None:
        raise BrokenPipeError("stdout closed")

    with pytest.raises(BrokenPipeError):
        audit_ledger(progress=progress)
    with connection.cursor() as cursor:
        cursor.execute("SHOW jit")
        assert cursor.fetchone()[0] == "on"
