"""The demo's plan page shows this period's overage with its charge."""

from __future__ import annotations

from kernia_billing import adjust_usage, track
from kernia_billing.models import Feature


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
