"""System checks for the subscription policy settings."""

from __future__ import annotations

from typing import Any

import pytest

from kernia_billing.checks import check_settings


def ids(settings: Any, **policy: Any) -> set[str]:
    settings.KERNIA_BILLING = {**settings.KERNIA_BILLING, **policy}
    return {message.id for message in check_settings()}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"PAST_DUE_GRACE": "yes"}, "kernia_billing.E007"),
        ({"ENTITLING_STATUSES": ("active", "bogus")}, "kernia_billing.E008"),
        ({"ENTITLING_STATUSES": "active"}, "kernia_billing.E008"),
        ({"ENTITLING_STATUSES": ("active", "past_due")}, "kernia_billing.W002"),
    ],
)
def test_bad_policy_values_are_reported(settings: Any, policy: dict, expected: str) -> None:
    assert expected in ids(settings, **policy)


def test_good_policy_values_pass(settings: Any) -> None:
    found = ids(settings, PAST_DUE_GRACE=False, ENTITLING_STATUSES=["active", "trialing", "paused"])
    assert not found & {"kernia_billing.E007", "kernia_billing.E008", "kernia_billing.W002"}
