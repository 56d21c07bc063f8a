"""The demo's plan page shows this period's overage with its charge."""

from __future__ import annotations

import io

from django.contrib.auth import get_user_model
from django.core.management import call_command

from kernia_billing import adjust_usage, track
from kernia_billing.models import Feature
from kernia_billing.testing import override_plan


def test_the_plan_page_shows_the_overage_of_this_period(client, metered):
    Feature.objects.filter(pk=metered.feature.pk).update(unit="messages")
    customer = metered.customer()
    client.force_login(customer.owner)
    assert b"Overage this period" not in client.get("/").content
    track(customer.owner, "messages", 100)
    track(customer.owner, "messages", 300)
    adjust_usage(customer.owner, "messages", -30, reason="duplicates")
    page = client.get("/").content.decode()
    assert "Overage this period: <strong>270 messages · $2.70</strong>" in page


def test_the_demos_team_customer_270_over_sees_it_on_the_plan_page(db, client, stripe_settings):
    # The demo's own catalog: Team bills messages over 50,000 at $0.01 through a meter.
    call_command("demo_setup", base_url="http://testserver", no_webhook=True, stdout=io.StringIO())
    alice = get_user_model().objects.get(username="alice")
    client.force_login(alice)
    with override_plan(alice, "team"):
        track(alice, "messages", 50000)
        track(alice, "messages", 270)
        page = client.get("/").content.decode()
    assert "Overage this period: <strong>270 messages · $2.70</strong>" in page
