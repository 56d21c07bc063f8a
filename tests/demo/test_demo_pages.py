"""The demo SaaS's setup command and pages through Django's test client (fake Stripe)."""

from __future__ import annotations

import datetime as dt
import io
import json
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from djstripe.models import WebhookEndpoint

from example_project.accounts.models import Organization
from example_project.demo.chart import daily_bars
from kernia_billing.models import CatalogPrice, CatalogProduct, Plan, ReviewState, UsageEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(stripe_settings, fake_stripe):
    call_command("demo_setup", base_url="http://testserver", stdout=io.StringIO())
    return fake_stripe


def test_setup_builds_the_catalog_users_and_webhook_endpoint(demo):
    pro = Plan.objects.get(key="pro")
    assert sorted(pro.plan_prices.values_list("price__lookup_key", flat=True)) == [
        "pro_annual",
        "pro_monthly",
    ]
    assert Plan.objects.get(is_default=True).key == "free"
    assert not CatalogPrice.objects.exclude(review_state=ReviewState.APPROVED).exists()
    assert not CatalogProduct.objects.exclude(review_state=ReviewState.APPROVED).exists()
    bob = get_user_model().objects.get(username="bob")
    assert list(Organization.objects.filter(members=bob).values_list("name", flat=True)) == ["Acme"]
    assert get_user_model().objects.get(username="admin").is_superuser
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.secret.startswith("whsec_")
    assert endpoint.url == f"http://testserver/stripe/webhook/{endpoint.djstripe_uuid}/"


def test_setup_twice_creates_no_second_price(demo):
    prices_before = CatalogPrice.objects.count()
    out = io.StringIO()
    call_command("demo_setup", base_url="http://testserver", no_webhook=True, stdout=out)
    assert "0 price(s) created" in out.getvalue()
    assert CatalogPrice.objects.count() == prices_before == 7


def test_setup_seeds_an_empty_stripe_account(stripe_settings, fake_stripe):
    """With real Stripe keys the seed's prices are created when their lookup keys are missing."""
    out = io.StringIO()
    call_command("demo_setup", no_webhook=True, stdout=out)
    assert "7 price(s) created" in out.getvalue()
    assert {p["lookup_key"] for p in fake_stripe.store.list_objects("price")} == {
        "pro_monthly",
        "pro_annual",
        "team_monthly",
        "team_annual",
        "messages_1000",  # the "Buy 1,000 messages" top-up
        "extra_seats_monthly",  # Team's "Extra seats" add-on
        "messages_overage",  # Team's messages over 50,000, through the meter
    }
    [meter] = fake_stripe.store.list_objects("billing.meter")
    assert meter["event_name"] == "messages_overage"


PAGES = [
    "/",
    "/catalog/",
    "/console/",
    "/console/?feature=messages&amount=5",
    "/usage/",
]


@pytest.mark.parametrize("path", [*PAGES, "/webhooks/"])
def test_pages_need_a_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("path", PAGES)
def test_pages_render_for_a_customer(client, demo, path):
    client.login(username="alice", password="alice")
    response = client.get(path)
    assert response.status_code == 200
    assert b"alice (personal)" in response.content


def test_webhook_deliveries_are_for_staff_only(client, demo):
    client.login(username="alice", password="alice")
    assert b'href="/webhooks/"' not in client.get("/").content
    refused = client.get("/webhooks/")
    assert refused.status_code == 403
    assert b"Staff only" in refused.content and b"webhook-total" not in refused.content
    client.logout()
    assert client.get("/webhooks/").status_code == 302
    client.login(username="admin", password="admin")
    assert b'href="/webhooks/"' in client.get("/").content
    assert b"webhook-total" in client.get("/webhooks/").content


def test_check_console_shows_the_check_json(client, demo):
    client.login(username="alice", password="alice")
    body = client.get("/console/?feature=messages&amount=101").content.decode()
    assert "&quot;allowed&quot;: false" in body
    assert "&quot;reason&quot;: &quot;insufficient_balance&quot;" in body
    body = client.get("/console/?feature=nope&amount=1").content.decode()
    assert "unknown_feature" in body


def test_sending_tracks_usage_and_refuses_past_the_balance(client, demo):
    client.login(username="alice", password="alice")
    response = client.post("/console/send/", {"count": "60", "text": "hi"}, follow=True)
    assert response.redirect_chain == [("/console/", 302)]
    assert b"Sent 60 messages" in response.content
    refused = client.post("/console/send/", {"count": "41"})
    assert refused.status_code == 402
    assert b"you have 40 messages left" in refused.content
    assert list(UsageEvent.objects.values_list("amount", flat=True)) == [60]
    assert client.post("/console/send/", {"count": "lots"}).status_code == 400
    assert client.get("/console/send/").status_code == 405


def _form_token(client):
    page = client.get("/console/").content.decode()
    return re.search(r'name="submission" value="([0-9a-f]{32})"', page).group(1)


def test_reloading_the_sent_page_sends_nothing_and_a_resubmitted_form_counts_once(client, demo):
    client.login(username="alice", password="alice")
    token = _form_token(client)
    assert _form_token(client) != token  # one token per rendered form

    sent = client.post("/console/send/", {"count": "5", "submission": token}, follow=True)
    assert b"Sent 5 messages" in sent.content
    reloaded = client.get(sent.redirect_chain[-1][0])  # the browser's reload: a GET
    assert b"Sent 5 messages" not in reloaded.content
    again = client.post("/console/send/", {"count": "5", "submission": token}, follow=True)
    assert b"Already sent" in again.content

    [event] = UsageEvent.objects.all()
    assert (event.amount, event.idempotency_key) == (5, f"demo-send-{token}")
    other = client.post("/console/send/", {"count": "1", "submission": _form_token(client)})
    assert other.status_code == 302
    assert UsageEvent.objects.count() == 2


def test_switching_to_an_organization_needs_membership(client, demo):
    acme = Organization.objects.get(slug="acme")
    client.login(username="alice", password="alice")
    assert client.post("/switch/", {"organization": str(acme.pk)}).status_code == 403
    assert client.post("/switch/", {"organization": "x"}).status_code == 403
    client.logout()
    client.login(username="bob", password="bob")
    response = client.post("/switch/", {"organization": str(acme.pk)}, follow=True)
    assert response.context["choice"].organization == acme
    client.post("/console/send/", {"count": "2"})
    event = UsageEvent.objects.select_related("customer").get()
    assert event.customer.owner == acme


def test_portal_without_a_stripe_customer_explains(client, demo):
    client.login(username="alice", password="alice")
    response = client.post("/portal/", follow=True)
    assert response.redirect_chain[-1][0] == "/"
    assert b"No billing portal yet" in response.content


def test_chart_has_a_bar_per_day_scaled_to_whole_ticks():
    today = dt.date(2026, 3, 14)
    totals = [
        {"date": today, "feature": "messages", "amount": 7},
        {"date": today, "feature": "projects", "amount": 2},
        {"date": today - dt.timedelta(days=2), "feature": "messages", "amount": 3},
    ]
    chart = daily_bars(totals, days=14, today=today)
    assert len(chart.bars) == 14
    assert [bar.value for bar in chart.bars[-3:]] == [3, 0, 9]
    assert [line.label for line in chart.grid] == ["0", "5", "10", "15", "20"]
    assert chart.bars[-1].height > chart.bars[-3].height > 0 == chart.bars[-2].height
    assert chart.total == 12
    empty = daily_bars([], days=7, today=today)
    assert [line.label for line in empty.grid] == ["0", "1", "2", "3", "4"]


def test_switch_only_redirects_within_the_site(client, demo):
    client.login(username="alice", password="alice")
    away = client.post("/switch/", {"organization": "", "next": "https://evil.example/"})
    assert away.status_code == 302 and away["Location"] == "/"
    home = client.post("/switch/", {"organization": "", "next": "/usage/"})
    assert home["Location"] == "/usage/"


def test_console_answers_a_non_number_in_the_error_shape(client, demo):
    client.login(username="alice", password="alice")
    response = client.get("/console/", {"feature": "messages", "amount": "lots"})
    assert response.status_code == 200
    error = json.loads(response.context["result_json"])["error"]
    assert (error["code"], error["fields"]) == (
        "invalid_request",
        {"required": "Must be an integer."},
    )


def test_subscribers_see_plan_change_buttons(client, demo, fake_stripe):
    from kernia_billing.services.customers import apply_subscription, get_or_create_customer
    from kernia_billing.types import SubscriptionSnapshot

    alice = get_user_model().objects.get(username="alice")
    pro_price = CatalogPrice.objects.get(lookup_key="pro_monthly")
    customer = get_or_create_customer(alice)
    now = dt.datetime.now(dt.UTC)
    apply_subscription(
        customer,
        SubscriptionSnapshot(
            id="sub_demo",
            stripe_customer_id="cus_demo",
            status="active",
            price_ids=(pro_price.stripe_id,),
            current_period_start=now,
            current_period_end=now + dt.timedelta(days=30),
        ),
    )
    client.login(username="alice", password="alice")
    page = client.get("/").content.decode()
    assert "Switch to annual" in page and "Upgrade · " in page  # plan changes
    assert 'action="/checkout/"' not in page


def _add_eur_prices():
    from kernia_billing.models import PlanPrice

    pro = Plan.objects.get(key="pro")
    for interval, amount in (("month", 1100), ("year", 11000)):
        price = CatalogPrice.objects.create(
            stripe_id=f"price_eur_{interval}",
            currency="eur",
            unit_amount=amount,
            recurring_interval=interval,
            price_type="recurring",
            review_state=ReviewState.APPROVED,
        )
        PlanPrice.objects.create(plan=pro, price=price)


def _shown_prices(response):
    return [pp.price.currency for plan in response.context["plans"] for pp in plan.shown_prices]


def test_the_pricing_table_shows_one_currency_per_visitor(client, demo):
    _add_eur_prices()
    client.login(username="alice", password="alice")

    american = client.get("/", HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9")
    assert set(_shown_prices(american)) == {"usd"}
    assert "€" not in american.content.decode()
    german = client.get("/", HTTP_ACCEPT_LANGUAGE="de-DE,de;q=0.9,en;q=0.5")
    # Pro has euro prices; Team has none, so it shows its dollar prices, never a mix.
    pro = next(p for p in german.context["plans"] if p.key == "pro")
    assert {pp.price.currency for pp in pro.shown_prices} == {"eur"}
    assert "€11.00 / month" in german.content.decode()
    assert "$12.00 / month" not in german.content.decode()

    chosen = client.get("/", {"currency": "usd"}, HTTP_ACCEPT_LANGUAGE="de-DE")
    assert set(_shown_prices(chosen)) == {"usd"}
    kept = client.get("/", HTTP_ACCEPT_LANGUAGE="de-DE")  # the choice is remembered
    assert set(_shown_prices(kept)) == {"usd"}


def test_cancelling_checkout_says_so(client, demo):
    client.login(username="alice", password="alice")
    pro_monthly = CatalogPrice.objects.get(lookup_key="pro_monthly")
    started = client.post("/checkout/", {"price": pro_monthly.stripe_id})
    session = demo.store.list_objects("checkout.session")[-1]
    assert session["cancel_url"] == "http://testserver/checkout/cancelled/"
    assert started.status_code == 302

    back = client.get("/checkout/cancelled/", follow=True)
    assert back.redirect_chain[-1][0] == "/"
    assert "Checkout cancelled: nothing was charged" in back.content.decode()
    assert back.context["state"].plan == "free"


def test_generate_a_report_reserves_shows_the_hold_and_confirms_the_actual(client, demo):
    client.login(username="alice", password="alice")
    before = client.get("/console/").content.decode()
    assert 'data-testid="report-balance">100<' in before
    started = client.post("/console/report/", {"estimate": "30"}, follow=True)
    body = started.content.decode()
    assert "30 messages held" in body
    assert 'data-testid="report-balance">70<' in body
    assert not UsageEvent.objects.exists()
    done = client.post("/console/report/finish/", {"actual": "23"}, follow=True)
    body = done.content.decode()
    assert "23 messages charged, 7 of the hold given back." in body
    assert 'data-testid="report-balance">77<' in body
    assert list(UsageEvent.objects.values_list("amount", flat=True)) == [23]
    assert client.post("/console/report/", {"estimate": "lots"}).status_code == 400
    assert client.post("/console/report/", {"estimate": "101"}).status_code == 402
    client.post("/console/report/", {"estimate": "10"})
    cancelled = client.post("/console/report/finish/", {"cancel": "1"}, follow=True)
    assert b"whole hold was given back" in cancelled.content
    assert 'data-testid="report-balance">77<' in cancelled.content.decode()
