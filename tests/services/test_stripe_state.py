"""Parsing Stripe subscriptions of any API version into snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import stripe

from kernia_billing.services.stripe_state import (
    invoice_subscription_id,
    pick_subscription,
    snapshot_from_stripe,
)
from tests.factories import PlanFactory, PlanPriceFactory

T0, T1, T2 = 1_767_225_600, 1_769_904_000, 1_772_323_200  # 2026-01-01, 02-01, 03-01


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def item(price: str, *, quantity: int = 1, interval: str = "month", periods: bool = True) -> Any:
    data: dict[str, Any] = {
        "id": f"si_{price}",
        "object": "subscription_item",
        "quantity": quantity,
        "price": {
            "id": price,
            "object": "price",
            "recurring": {"interval": interval, "interval_count": 1},
        },
    }
    if periods:
        data.update(current_period_start=T1, current_period_end=T2)
    return data


def subscription(*items: Any, **fields: Any) -> dict[str, Any]:
    return {
        "id": fields.pop("id", "sub_1"),
        "object": "subscription",
        "customer": "cus_1",
        "status": "active",
        "created": T0,
        "cancel_at_period_end": False,
        "cancel_at": None,
        "trial_end": None,
        "livemode": False,
        "items": {"object": "list", "data": list(items)},
        **fields,
    }


@pytest.fixture
def mapped(db: None) -> dict[str, str]:
    seats = PlanPriceFactory(plan=PlanFactory(key="team", display_order=5))
    pro = PlanPriceFactory(plan=PlanFactory(key="pro", display_order=1))
    return {"team": seats.price.stripe_id, "pro": pro.price.stripe_id}


def test_current_api_reads_periods_from_the_items(mapped: dict[str, str]) -> None:
    snap = snapshot_from_stripe(subscription(item("price_addon"), item(mapped["team"], quantity=7)))
    assert (snap.current_period_start, snap.current_period_end) == (at(T1), at(T2))
    assert snap.price_ids == ("price_addon", mapped["team"])
    assert snap.quantity == 7  # the mapped item's quantity, not the add-on's
    assert (snap.interval, snap.interval_count) == ("month", 1)
    assert snap.stripe_customer_id == "cus_1"


def test_old_api_falls_back_to_the_subscription_fields(mapped: dict[str, str]) -> None:
    old_item = item(mapped["pro"], periods=False, interval="year")
    old_item["plan"] = old_item.pop("price") | {"interval": "year"}
    snap = snapshot_from_stripe(
        subscription(old_item, current_period_start=T0, current_period_end=T2)
    )
    assert (snap.current_period_start, snap.current_period_end) == (at(T0), at(T2))
    assert snap.price_ids == (mapped["pro"],)


def test_stripe_objects_parse_like_dicts(mapped: dict[str, str]) -> None:
    data = subscription(item(mapped["pro"]), trial_end=T1, customer={"id": "cus_9"})
    obj = stripe.Subscription.construct_from(data, "sk_test_x")
    assert snapshot_from_stripe(obj) == snapshot_from_stripe(data)
    assert snapshot_from_stripe(obj).trial_end == at(T1)
    assert snapshot_from_stripe(obj).stripe_customer_id == "cus_9"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"cancel_at_period_end": True}, True),
        ({"cancel_at": T2}, True),  # the newer dashboards' "cancel at period end"
        ({"cancel_at": T2 + 86_400 * 90}, False),  # scheduled for a later period
        ({"cancel_at": T2, "status": "canceled"}, False),
        ({}, False),
    ],
)
def test_cancel_at_period_end(
    mapped: dict[str, str], fields: dict[str, Any], expected: bool
) -> None:
    assert (
        snapshot_from_stripe(subscription(item(mapped["pro"]), **fields)).cancel_at_period_end
        is expected
    )


def test_pick_prefers_the_entitling_mapped_subscription(mapped: dict[str, str]) -> None:
    canceled = subscription(item(mapped["team"]), id="sub_old", status="canceled", created=T2)
    unmapped = subscription(item("price_other"), id="sub_other", created=T2)
    incomplete = subscription(item(mapped["team"]), id="sub_new", status="incomplete", created=T2)
    active = subscription(item(mapped["pro"]), id="sub_pro", created=T0)
    assert pick_subscription([canceled, unmapped, incomplete, active]).id == "sub_pro"
    assert pick_subscription([canceled, incomplete]).id == "sub_new"
    assert pick_subscription([canceled]).id == "sub_old"
    assert pick_subscription([]) is None


def test_invoice_subscription_on_both_api_shapes() -> None:
    current = {"parent": {"subscription_details": {"subscription": "sub_a"}}}
    assert invoice_subscription_id(current) == "sub_a"
    assert invoice_subscription_id({"subscription": "sub_b"}) == "sub_b"
    assert invoice_subscription_id({"parent": None}) == ""
