"""The reservations admin: a read-only list filtered by status; "Release" gives holds back."""

from __future__ import annotations

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Permission
from django.urls import reverse

import kernia_billing
from kernia_billing.models import Reservation, ResetPeriod
from kernia_billing.services.ledger_audit import audit_ledger
from tests.factories import (
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

RESERVATIONS = reverse("admin:kernia_billing_reservation_changelist")


@pytest.fixture
def owner():
    tokens = FeatureFactory(key="tokens")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=tokens, included=100, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "tokens")
    return user


def test_the_list_shows_holds_filtered_by_status_and_nothing_can_be_added_or_edited(client, owner):
    kept = kernia_billing.reserve(owner, "tokens", 40)
    done = kernia_billing.reserve(owner, "tokens", 7)
    kernia_billing.confirm(done.id, actual=5)
    client.force_login(StaffFactory())
    page = client.get(RESERVATIONS)
    assert page.status_code == 200
    shown = list(page.context["cl"].result_list)
    assert {r.pk for r in shown} == {kept.id, done.id}
    html = page.content.decode()
    assert "tokens" in html and "Release (give the hold back)" in html
    open_only = client.get(RESERVATIONS, {"status__exact": "open"})
    assert [r.pk for r in open_only.context["cl"].result_list] == [kept.id]
    assert client.get(reverse("admin:kernia_billing_reservation_add")).status_code == 403
    change = client.get(reverse("admin:kernia_billing_reservation_change", args=[kept.id]))
    assert change.status_code == 200  # viewable, read-only
    assert b'name="amount"' not in change.content
    edit = client.post(
        reverse("admin:kernia_billing_reservation_change", args=[kept.id]), {"amount": 1}
    )
    assert edit.status_code == 403
    assert Reservation.objects.get(pk=kept.id).amount == 40


def test_release_gives_open_holds_back_through_the_service_once(client, owner):
    hold = kernia_billing.reserve(owner, "tokens", 40)
    done = kernia_billing.reserve(owner, "tokens", 10)
    kernia_billing.confirm(done.id)
    assert kernia_billing.check(owner, "tokens").balance == 50
    client.force_login(StaffFactory())
    selected = {"action": "release_selected", helpers.ACTION_CHECKBOX_NAME: [hold.id, done.id]}
    response = client.post(RESERVATIONS, selected, follow=True)
    assert response.status_code == 200
    assert "Released 1 reservation(s); 1 were not open." in response.content.decode()
    assert Reservation.objects.get(pk=hold.id).status == "released"
    assert Reservation.objects.get(pk=done.id).status == "confirmed"
    assert kernia_billing.check(owner, "tokens").balance == 90
    client.post(RESERVATIONS, selected)  # again: nothing more is given back
    assert kernia_billing.check(owner, "tokens").balance == 90
    assert audit_ledger() == []


def test_staff_without_the_change_permission_cannot_release(client, owner):
    hold = kernia_billing.reserve(owner, "tokens", 40)
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_reservation"))
    client.force_login(viewer)
    page = client.get(RESERVATIONS)
    assert page.status_code == 200
    assert "Release (give the hold back)" not in page.content.decode()
    selected = {"action": "release_selected", helpers.ACTION_CHECKBOX_NAME: [hold.id]}
    client.post(RESERVATIONS, selected)
    assert Reservation.objects.get(pk=hold.id).status == "open"
