"""A newcomer's click-through of the demo SaaS in a real browser.

Live Django server (pytest-django ``live_server``) + the fake Stripe delivering signed
webhooks to it + Chromium driven by Playwright: log in, see Free, upgrade to Pro
through the hosted checkout, see Pro and the new balances, send messages and see them
in the history and the chart, be refused when the balance runs out, open the portal,
see the webhook count rise.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from django.core.management import call_command
from djstripe.models import WebhookEventTrigger

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PRO_MESSAGES = 10_000  # example_project/catalog.json


@pytest.fixture
def demo(demo_server: str, stripe_settings: Any, fake_stripe: Any) -> str:
    """The demo as ``scripts/demo`` sets it up, served by a live server; its base URL."""
    call_command("demo_setup", base_url=demo_server, stdout=_Null())
    return demo_server


class _Null:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


def _log_in(page: Any, base_url: str, username: str) -> None:
    page.goto(f"{base_url}/")
    assert "/login/" in page.url, "pages require a login"
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", username)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def _text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text()).strip()


def _number(page: Any, testid: str) -> int:
    return int(_text(page, testid).replace(",", ""))


def _webhook_total(page: Any, base_url: str) -> int:
    page.goto(f"{base_url}/webhooks/")
    return int(_text(page, "webhook-total"))


def _send(page: Any, base_url: str, count: int) -> Any:
    page.goto(f"{base_url}/console/")
    page.fill("[data-testid=message-count]", str(count))
    with page.expect_navigation() as navigation:
        page.click("[data-testid=send-messages]")
    return navigation.value


def test_upgrade_use_and_run_out(demo: str, page: Any, fake_stripe: Any, screenshot: Any) -> None:
    base = demo
    page.goto(f"{base}/")
    screenshot(page, "login")
    _log_in(page, base, "alice")

    # Free to start with: the default plan, no subscription.
    assert _text(page, "current-plan") == "Free"
    assert _number(page, "balance-messages") == 100
    screenshot(page, "free")
    webhooks_before = WebhookEventTrigger.objects.count()
    page.goto(f"{base}/webhooks/")
    assert "Staff only" in page.inner_text("body")  # every customer's events: not for alice
    page.goto(f"{base}/")

    # Upgrade through the fake's hosted checkout page.
    page.goto(f"{base}/")
    page.click("[data-testid=upgrade-pro_monthly]")
    page.wait_for_url(re.compile(r"/checkout/cs_test_"))
    assert "Pro" in page.inner_text("body")
    screenshot(page, "checkout")
    page.click("text=Pay and subscribe")
    page.wait_for_url(f"{base}/")

    # The return applied the subscription at once: Pro and its balances.
    assert _text(page, "current-plan") == "Pro"
    assert _text(page, "subscription-status") == "active"
    assert _number(page, "balance-messages") == PRO_MESSAGES
    assert "Renews on" in page.inner_text("[data-testid=current-plan] ~ dl")
    screenshot(page, "pro")

    # Use the feature: it shows in the ledger and the chart.
    response = _send(page, base, 3)
    assert response.status == 200
    assert "Sent 3 messages" in _text(page, "sent")
    screenshot(page, "sent")
    page.goto(f"{base}/usage/")
    first_row = page.locator("[data-testid=usage-table] tbody tr").first
    assert "messages" in first_row.inner_text()
    assert str(PRO_MESSAGES - 3) in first_row.inner_text()
    bars = page.locator("[data-testid=usage-chart] rect[data-value='3']")
    assert bars.count() == 1, "today's bar carries the 3 messages"
    screenshot(page, "usage")

    # Spend the rest, then be refused: nothing is recorded for the refused attempt.
    assert _send(page, base, PRO_MESSAGES - 3).status == 200
    refused = _send(page, base, 1)
    assert refused.status == 402
    assert "0 messages left" in _text(page, "refused")
    screenshot(page, "refused")
    page.goto(f"{base}/console/?feature=messages&amount=1")
    assert '"reason": "insufficient_balance"' in _text(page, "check-json")
    screenshot(page, "check")
    page.goto(f"{base}/")
    assert _number(page, "balance-messages") == 0

    # Manage billing opens the portal on the fake, with the subscription in it.
    page.click("[data-testid=manage-billing]")
    page.wait_for_url(re.compile(r"/portal/"))
    assert "active" in page.inner_text("body")
    screenshot(page, "portal")
    page.click("text=Back")
    page.wait_for_url(f"{base}/")

    # Stripe's events (customer, checkout, subscription, invoice) reached the webhook.
    fake_stripe.flush_webhooks()
    assert all(delivery.ok for delivery in fake_stripe.deliveries), fake_stripe.deliveries
    page.click("text=Log out alice")
    _log_in(page, base, "admin")
    assert _webhook_total(page, base) > webhooks_before
    assert int(_text(page, "webhook-failed")) == 0
    assert _text(page, "webhook-last") != "None yet"
    screenshot(page, "webhooks")

    page.goto(f"{base}/catalog/")
    assert "pro_annual" in page.inner_text("[data-testid=imported-prices]")
    screenshot(page, "catalog")


def test_cancel_in_portal_shows_cancels_on(
    demo: str, page: Any, fake_stripe: Any, screenshot: Any
) -> None:
    """The portal's cancel reaches the app only by webhook; the plan page then says so."""
    base = demo
    _log_in(page, base, "bob")
    page.select_option("[data-testid=owner-switch]", label="Acme (organization)")
    page.click("form.switcher button")
    assert _text(page, "acting-for") == "Acme"
    assert _text(page, "current-plan") == "Free"

    page.click("[data-testid=upgrade-pro_annual]")
    page.click("text=Pay and subscribe")
    page.wait_for_url(f"{base}/")
    assert _text(page, "current-plan") == "Pro"

    page.click("[data-testid=manage-billing]")
    page.click("text=Cancel at period end")
    page.click("text=Back")
    page.wait_for_url(f"{base}/")
    fake_stripe.flush_webhooks()
    deadline = time.monotonic() + 10
    while not page.get_by_test_id("cancels-on").count() and time.monotonic() < deadline:
        time.sleep(0.2)
        page.reload()
    assert page.get_by_test_id("cancels-on").count() == 1
    assert _text(page, "current-plan") == "Pro", "access is kept until the period ends"
    screenshot(page, "org-cancels")

    # Back on the personal customer: still Free, the organization's plan is not bob's.
    page.select_option("[data-testid=owner-switch]", index=0)
    page.click("form.switcher button")
    assert _text(page, "current-plan") == "Free"
