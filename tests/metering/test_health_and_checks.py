"""Overage that is not billed or not reaching Stripe is visible: checks, health view, admin."""

from __future__ import annotations

from datetime import timedelta

from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from kernia_billing import track
from kernia_billing.checks import check_overage_billing
from kernia_billing.models import OverageReport, PlanFeature
from kernia_billing.services.metering.sender import send_pending
from tests.factories import StaffFactory


def _ids():
    return sorted(m.id for m in check_overage_billing(databases=["default"]))


def test_checks_overage_not_billed_and_inactive_meter(metered):
    assert _ids() == []
    PlanFeature.objects.update(overage_price=None)
    assert _ids() == ["kernia_billing.W010"]
    pf = PlanFeature.objects.get()
    pf.overage_price_id = (
        OverageReport._meta.apps.get_model("kernia_billing", "CatalogPrice")
        .objects.get(stripe_id="price_messages_overage")
        .pk
    )
    pf.save()
    metered.meter.status = "inactive"
    metered.meter.save()
    assert _ids() == ["kernia_billing.E012"]


def test_lagging_reporting_warns(metered):
    customer = metered.customer()
    track(customer.owner, "messages", 101)
    OverageReport.objects.update(occurred_at=timezone.now() - timedelta(hours=2))
    assert "kernia_billing.W011" in _ids()
    OverageReport.objects.update(occurred_at=timezone.now())
    send_pending()
    assert _ids() == []


def test_health_view_shows_lag_and_counts(metered, client):
    customer = metered.customer()
    track(customer.owner, "messages", 103)
    url = reverse("kernia_billing:billing-usage-reporting-health")
    assert client.get(url).status_code in (401, 403)
    client.force_login(StaffFactory())
    body = client.get(url).json()
    assert body["pending"] == 1 and body["sent"] == 0
    send_pending()
    body = client.get(url).json()
    assert (body["pending"], body["sent"], body["parked"], body["lagSeconds"]) == (1 - 1, 1, 0, 0)


def test_admin_lists_the_outbox(metered, admin_client):
    customer = metered.customer()
    track(customer.owner, "messages", 103)
    response = admin_client.get(reverse("admin:kernia_billing_overagereport_changelist"))
    assert response.status_code == 200
    assert OverageReport.objects.get().identifier in response.content.decode()


def test_check_command_passes_on_a_clean_catalog(metered):
    call_command("check", "--database", "default", "--fail-level", "WARNING")


def test_an_overage_price_without_unit_amount_warns_that_corrections_cannot_be_credited(metered):
    PlanFeature.objects.get().overage_price.__class__.objects.filter(
        stripe_id="price_messages_overage"
    ).update(unit_amount=None)
    assert _ids() == ["kernia_billing.W015"]
