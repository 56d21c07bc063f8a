"""HISTORY_DATABASE: history reads go to their own alias (a read replica); E022 guards it."""

from __future__ import annotations

from django.test import override_settings

from kernia_billing import selectors
from kernia_billing.checks import check_history_database

VALID = {
    "ORGANIZATION_MODEL": "accounts.Organization",
    "IS_ORGANIZATION_MEMBER": "example_project.accounts.billing.is_member",
}


def test_an_unknown_history_database_is_e022():
    with override_settings(KERNIA_BILLING={**VALID, "HISTORY_DATABASE": "replica"}):
        assert [m.id for m in check_history_database()] == ["kernia_billing.E022"]
    with override_settings(KERNIA_BILLING={**VALID, "HISTORY_DATABASE": "default"}):
        assert check_history_database() == []
    assert check_history_database() == []


def test_history_reads_use_the_history_alias():
    assert selectors.usage_events(1).db == "default"
    with override_settings(KERNIA_BILLING={**VALID, "HISTORY_DATABASE": "replica"}):
        assert selectors.history_database() == "replica"
        assert selectors.usage_events(1).db == "replica"
