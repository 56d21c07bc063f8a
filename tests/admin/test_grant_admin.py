"""The admin's "Grant credits…" action: a form, a confirmation, then one grant each."""

from __future__ import annotations

import pytest
from django.contrib.admin import helpers
from django.urls import reverse

import kernia_billing
from kernia_billing.models import Grant, ResetPeriod
from kernia_billing.services.customers import get_or_create_customer
from tests.factories import (
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

CUSTOMERS = reverse("admin:kernia_billing_billingcustomer_changelist")


@pytest.fixture
def customer():
    messages = FeatureFactory(key="messages")
    plan = PlanFactory(key="pro", is_default=True)
    PlanFeatureFactory(plan=plan, feature=messages, included=20, reset_period=ResetPeriod.MONTH)
    user = UserFactory()
    kernia_billing.check(user, "messages")
    return get_or_create_customer(user)


def test_grant_credits_form_confirmation_then_one_grant(client, customer):
    staff = StaffFactory()
    client.force_login(staff)
    base = {"action": "grant_credits", helpers.ACTION_CHECKBOX_NAME: [customer.pk]}
    form = client.post(CUSTOMERS, base)
    assert form.status_code == 200
    assert b'name="amount"' in form.content

    fields = {"feature": customer.entitlements.get().feature_id, "amount": 500}
    fields |= {"reason": "outage", "source": "adjustment", "step": "review"}
    review = client.post(CUSTOMERS, {**base, **fields})
    assert b"grant-confirmation" in review.content
    token = review.context["token"]
    assert Grant.objects.count() == 0

    confirm = {**base, **fields, "step": "confirm", "token": token}
    assert client.post(CUSTOMERS, confirm).status_code == 302
    assert client.post(CUSTOMERS, confirm).status_code == 302  # a double submit
    grant = Grant.objects.get()
    assert (grant.amount, grant.reason, grant.granted_by) == (500, "outage", staff)
    assert kernia_billing.check(customer, "messages").balance == 520


def test_staff_without_the_manage_permission_do_not_see_it(client, customer):
    from django.contrib.auth.models import Permission

    viewer = UserFactory(username="viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_billingcustomer"))
    client.force_login(viewer)
    page = client.get(CUSTOMERS)
    assert page.status_code == 200
    assert b"grant_credits" not in page.content
