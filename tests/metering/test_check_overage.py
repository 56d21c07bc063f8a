"""check shows this period's overage and its estimated charge, in at most two queries."""

from __future__ import annotations

from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from kernia_billing import adjust_usage, check, track
from kernia_billing.models import Feature
from kernia_billing.services.customers import customer_state
from kernia_billing.services.metering.sender import send_pending
from tests.factories import FeatureFactory, PlanFeatureFactory


def test_check_shows_the_periods_overage_like_billing_customer(metered):
    Feature.objects.filter(pk=metered.feature.pk).update(unit="messages")
    customer = metered.customer()
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 270)
    check(customer.owner, "messages")  # first use paths done
    with CaptureQueriesContext(connection) as queries:
        result = check(customer.owner, "messages")
    assert len(queries) <= 2
    assert result.overage is not None
    assert (result.overage.units, result.overage.estimated_amount) == (270, 270)
    assert result.overage.display == "270 messages · $2.70"
    [same] = customer_state(customer.owner).overage
    assert same == result.overage


def test_the_check_endpoint_renders_overage_and_no_overage_costs_no_query(metered):
    customer = metered.customer()
    PlanFeatureFactory(plan=customer.plan, feature=FeatureFactory(key="exports"), included=5)
    track(customer.owner, "messages", 105)
    client = APIClient()
    client.force_authenticate(customer.owner)
    body = client.post("/api/auth/billing/check", {"feature": "messages"}, format="json").json()
    assert body["overage"] == {
        "feature": "messages",
        "units": 5,
        "unit": metered.feature.unit,
        "estimatedAmount": 5,
        "currency": "usd",
        "display": body["overage"]["display"],
    }
    assert body["overage"]["display"].endswith("· $0.05")
    exports = client.post("/api/auth/billing/check", {"feature": "exports"}, format="json")
    assert "overage" not in exports.json()
    check(customer.owner, "exports")
    with CaptureQueriesContext(connection) as queries:
        plain = check(customer.owner, "exports")
    assert plain.overage is None and len(queries) == 1


def test_check_overage_follows_corrections(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 150)
    send_pending()
    assert check(customer.owner, "messages").overage.units == 50
    adjust_usage(customer.owner, "messages", -20, reason="duplicates")
    overage = check(customer.owner, "messages").overage
    assert (overage.units, overage.estimated_amount) == (30, 30)
    adjust_usage(customer.owner, "messages", -30, reason="duplicates")
    assert check(customer.owner, "messages").overage.units == 0
