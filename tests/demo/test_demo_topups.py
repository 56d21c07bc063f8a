"""The demo: "Buy 1,000 messages" through the fake's hosted Checkout page, Team's "Extra
seats" add-on, and the plan page listing grants with their expiry."""

from __future__ import annotations

import http.client
import io
from urllib.parse import parse_qs, urlsplit

import pytest
from django.core.management import call_command

from kernia_billing.models import Grant, GrantSource

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(stripe_settings, fake_stripe):
    call_command("demo_setup", base_url="http://testserver", stdout=io.StringIO())
    return fake_stripe


def _pay_on_hosted_page(url: str, button: bytes = b">Pay<") -> str:
    """POST the fake's hosted page's "Pay" form; return where Stripe sends the browser."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    page = connection.request("GET", parts.path) or connection.getresponse()
    assert page.status == 200 and button in page.read()
    connection.request("POST", f"{parts.path}/complete")
    answer = connection.getresponse()
    answer.read()
    assert answer.status in (302, 303)
    return str(answer.getheader("Location"))


def test_buy_1000_messages_through_the_hosted_checkout(client, demo):
    client.login(username="alice", password="alice")
    page = client.get("/").content.decode()
    assert "Buy 1,000 messages" in page
    started = client.post("/topup/", {"price": _pack_price(page)})
    assert started.status_code == 302
    back = urlsplit(_pay_on_hosted_page(started["Location"]))
    landed = client.get(back.path, parse_qs(back.query), follow=True)
    assert "Your top-up was added" in landed.content.decode()
    grant = Grant.objects.get(source=GrantSource.TOPUP)
    assert grant.amount == 1000 and grant.expires_at is not None
    html = landed.content.decode()
    assert "topup" in html and f"expires {grant.expires_at:%b} " in html


def _pack_price(page: str) -> str:
    marker = 'name="price" value="'
    start = page.index(marker, page.index("Buy 1,000 messages") - 400) + len(marker)
    return page[start : page.index('"', start)]


def test_extra_seats_addon_on_team(client, demo):
    from kernia_billing.models import CatalogPrice

    client.login(username="alice", password="alice")
    team = CatalogPrice.objects.get(lookup_key="team_monthly")
    started = client.post("/checkout/", {"price": team.stripe_id})
    back = urlsplit(_pay_on_hosted_page(started["Location"], b">Pay and subscribe<"))
    client.get(back.path, parse_qs(back.query))
    page = client.get("/")
    forms = page.context["addon_prices"]
    assert [m.addon.key for m in forms] == ["extra-seats"]
    seats = next(e for e in page.context["state"].entitlements if e.feature == "seats")
    before = seats.included
    done = client.post("/addon/", {"price": forms[0].price.stripe_id, "quantity": "2"}, follow=True)
    assert "Add-on updated." in done.content.decode()
    seats = next(e for e in done.context["state"].entitlements if e.feature == "seats")
    assert seats.included == before + 10
