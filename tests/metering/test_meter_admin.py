"""Imported meters are reviewed in the admin like products and prices."""

from __future__ import annotations

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse

from kernia_billing import adjust_usage, track
from kernia_billing.models import Meter, ReviewState
from tests.factories import StaffFactory, UserFactory

METERS = reverse("admin:kernia_billing_meter_changelist")
CORRECTIONS = reverse("admin:kernia_billing_usagecorrection_changelist")


@pytest.fixture
def staff_client(db, client):
    staff = StaffFactory()
    client.force_login(staff)
    client.staff = staff
    return client


def _action(client, action, meters):
    data = {"action": action, ACTION_CHECKBOX_NAME: [m.pk for m in meters]}
    return client.post(METERS, data, follow=True)


def _messages(response):
    return [str(m) for m in response.context["messages"]]


def _pending_meter(fake, name):
    data = fake.create_meter(
        display_name=name, event_name=name, default_aggregation={"formula": "sum"}
    )
    return Meter.objects.create(stripe_id=data["id"], event_name=name, display_name=name)


def test_staff_approve_and_ignore_imported_meters(staff_client, metered):
    first = _pending_meter(metered.fake, "api_calls")
    second = _pending_meter(metered.fake, "exports")
    listing = staff_client.get(METERS)
    assert listing.status_code == 200
    assert b"api_calls" in listing.content and b"Sync from Stripe" in listing.content

    response = _action(staff_client, "approve_selected", [first])
    assert "1 approved." in _messages(response)
    first.refresh_from_db()
    assert (first.review_state, first.reviewed_by) == (ReviewState.APPROVED, staff_client.staff)
    assert first.reviewed_fingerprint == first.fingerprint

    response = _action(staff_client, "ignore_selected", [second])
    assert "1 ignored." in _messages(response)
    assert Meter.objects.get(pk=second.pk).review_state == ReviewState.IGNORED


def test_a_meter_billing_an_overage_price_cannot_be_ignored(staff_client, metered):
    response = _action(staff_client, "ignore_selected", [metered.meter])
    [message] = _messages(response)
    assert "cannot be ignored" in message and metered.meter.stripe_id in message
    assert Meter.objects.get(pk=metered.meter.pk).review_state == ReviewState.APPROVED


def test_non_staff_cannot_review_meters(client, metered):
    client.force_login(UserFactory())
    meter = _pending_meter(metered.fake, "api_calls")
    response = client.post(METERS, {"action": "approve_selected", ACTION_CHECKBOX_NAME: [meter.pk]})
    assert response.status_code == 302  # to the admin login
    assert Meter.objects.get(pk=meter.pk).review_state == ReviewState.PENDING


def test_corrections_are_listed_in_the_admin(staff_client, metered):
    customer = metered.customer()
    track(customer.owner, "messages", 120)
    adjust_usage(customer.owner, "messages", -20, reason="duplicate import")
    response = staff_client.get(CORRECTIONS)
    assert response.status_code == 200
    assert b"duplicate import" in response.content
