"""Helpers for end-to-end lifecycle tests: a catalog in the fake Stripe, mapped to plans,
and signed webhook deliveries through dj-stripe's real endpoint with Django's test client."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from djstripe.models import WebhookEndpoint

from kernia_billing.models import FeatureKind, Plan, ResetPeriod
from kernia_billing.services import catalog
from kernia_billing.testing import FakeStripe
from tests.factories import FeatureFactory, PlanFactory, PlanFeatureFactory, PlanPriceFactory


@dataclass
class Catalog:
    free: Plan
    pro: Plan
    business: Plan
    team: Plan
    pro_monthly: str
    pro_yearly: str
    business_monthly: str
    team_monthly: str


def build_catalog(fake: FakeStripe) -> Catalog:
    """Free (default, 100 messages), Pro (1000), Business (10000), Team (seats from quantity).

    Stripe prices are created in the fake and imported with the catalog service, then
    approved and mapped as an operator would in the admin.
    """
    messages = FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)
    seats = FeatureFactory(key="seats", name="Seats", kind=FeatureKind.SEATS)
    free = PlanFactory(key="free", name="Free", is_default=True, display_order=0)
    pro = PlanFactory(key="pro", name="Pro", display_order=10)
    business = PlanFactory(key="business", name="Business", display_order=20)
    team = PlanFactory(key="team", name="Team", display_order=30)
    for plan, included in ((free, 100), (pro, 1000), (business, 10000), (team, 5000)):
        PlanFeatureFactory(
            plan=plan, feature=messages, included=included, reset_period=ResetPeriod.BILLING
        )
    PlanFeatureFactory(
        plan=team,
        feature=seats,
        included=0,
        reset_period=ResetPeriod.NONE,
        included_from_quantity=True,
    )

    def price(plan: Plan, amount: int, interval: str) -> str:
        product = fake.create_product(name=plan.name)
        created = fake.create_price(
            product=product["id"],
            unit_amount=amount,
            currency="usd",
            recurring={"interval": interval},
        )
        catalog.apply_stripe_product(product)
        catalog.apply_stripe_price(created)
        from kernia_billing.models import CatalogPrice, ReviewState

        row = CatalogPrice.objects.get(stripe_id=created["id"])
        row.review_state = ReviewState.APPROVED
        row.reviewed_fingerprint = row.fingerprint
        row.save()
        PlanPriceFactory(plan=plan, price=row)
        return str(created["id"])

    return Catalog(
        free=free,
        pro=pro,
        business=business,
        team=team,
        pro_monthly=price(pro, 1200, "month"),
        pro_yearly=price(pro, 12000, "year"),
        business_monthly=price(business, 4900, "month"),
        team_monthly=price(team, 900, "month"),
    )


@dataclass
class Webhooks:
    """Delivers the fake's events to dj-stripe's endpoint, signed, in the order asked."""

    fake: FakeStripe
    client: Client
    endpoint: WebhookEndpoint
    secret: str
    delivered: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return reverse("djstripe:djstripe_webhook_by_uuid", args=[self.endpoint.djstripe_uuid])

    def post(
        self, event: dict[str, Any], *, secret: str | None = None, timestamp: int | None = None
    ) -> Any:
        body, headers = self.fake.sign_webhook(
            event, secret=secret or self.secret, timestamp=timestamp
        )
        response = self.client.post(
            self.url,
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=headers["Stripe-Signature"],
        )
        self.delivered.add(event["id"])
        return response

    def pending(self, type: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.fake.events(type) if e["id"] not in self.delivered]

    def deliver_pending(self) -> list[Any]:
        """Deliver every event not delivered yet, oldest first; each must succeed."""
        responses = []
        for event in self.pending():
            response = self.post(event)
            assert response.status_code == 200, (event["type"], response.status_code)
            responses.append(response)
        return responses


def make_webhooks(fake: FakeStripe) -> Webhooks:
    fake.webhook_delivery = False  # delivered by the test, through the test client
    remote = fake.register_webhook_endpoint("http://testserver/stripe/webhook/")
    endpoint = WebhookEndpoint.objects.create(
        id=remote["id"],
        livemode=False,
        secret=remote["secret"],
        url=remote["url"],
        enabled_events=["*"],
        status="enabled",
        api_version=remote.get("api_version") or "",
    )
    # dj-stripe re-raises processing errors (Django answers 500): see the status, not the raise.
    client = Client(raise_request_exception=False)
    return Webhooks(fake=fake, client=client, endpoint=endpoint, secret=remote["secret"])


def fake_now(fake: FakeStripe) -> datetime:
    return datetime.fromtimestamp(fake.now(), tz=UTC)


def stale_timestamp() -> int:
    return int(time.time()) - 301


# --- fixtures (imported by the lifecycle test modules) -----------------------------------


@pytest.fixture
def plans(db: None, fake_stripe: FakeStripe, stripe_settings: Any) -> Catalog:
    return build_catalog(fake_stripe)


@pytest.fixture
def webhooks(db: None, fake_stripe: FakeStripe, stripe_settings: Any) -> Webhooks:
    return make_webhooks(fake_stripe)
