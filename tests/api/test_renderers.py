"""The hot endpoints' direct renderers give exactly what the schema's serializers give."""

from datetime import UTC, datetime

import pytest

from kernia_billing.api.serializers import (
    CheckResultSerializer,
    TrackResultSerializer,
    render_check,
    render_track,
)
from kernia_billing.services.grants.totals import GrantPart
from kernia_billing.types import CheckResult, OverageEstimate, TrackResult

CHECKS = [
    CheckResult(
        allowed=True,
        feature="messages",
        kind="metered",
        balance=5,
        included=10,
        usage=5,
        reset_period="month",
        next_reset_at=datetime(2026, 1, 31, 9, tzinfo=UTC),
        plan="pro",
    ),
    CheckResult(allowed=False, feature="sso", kind="boolean", reason="not_included"),
    CheckResult(
        allowed=True,
        feature="messages",
        kind="metered",
        balance=35,
        included=10,
        usage=5,
        reset_period="month",
        next_reset_at=datetime(2026, 1, 31, 9, tzinfo=UTC),
        next_expiry=datetime(2026, 1, 20, tzinfo=UTC),
        grants=(
            GrantPart("plan", 5, datetime(2026, 1, 31, 9, tzinfo=UTC)),
            GrantPart("topup", 30, datetime(2026, 1, 20, tzinfo=UTC), 7),
        ),
        plan="pro",
    ),
    CheckResult(
        allowed=True,
        feature="projects",
        kind="quantity",
        unlimited=True,
        allow_overage=True,
        reset_period="none",
        plan="team",
    ),
    CheckResult(
        allowed=True,
        feature="messages",
        kind="metered",
        balance=-270,
        included=1000,
        usage=1270,
        allow_overage=True,
        reset_period="billing",
        plan="team",
        overage=OverageEstimate("messages", 270, "messages", 270, "usd", "270 messages · $2.70"),
    ),
]


@pytest.mark.parametrize("result", CHECKS)
def test_check_renderer_matches_serializer(result):
    assert render_check(result) == CheckResultSerializer(result).data


@pytest.mark.parametrize("replayed", [False, True])
def test_track_renderer_matches_serializer(replayed):
    result = TrackResult(
        event_id=7,
        feature="messages",
        amount=2,
        balance=8,
        usage=2,
        included=10,
        unlimited=False,
        replayed=replayed,
        created_at=datetime(2026, 11, 24, 4, 0, 1, 123456, tzinfo=UTC),
    )
    assert render_track(result) == TrackResultSerializer(result).data
