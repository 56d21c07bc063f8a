"""A plan that bills overage of messages through a Stripe meter, and a customer on it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kernia_billing.models import (
    BillingCustomer,
    Feature,
    FeatureKind,
    Meter,
    OverageReport,
    ReviewState,
)
from kernia_billing.services.customers import get_or_create_customer
from tests.factories import (
    CatalogPriceFactory,
    FeatureFactory,
    PlanFactory,
    PlanFeatureFactory,
    UserFactory,
)


@dataclass
class Metered:
    meter: Meter
    feature: Feature
    fake: object

    def customer(self, name: str = "acme") -> BillingCustomer:
        user = UserFactory(username=name)
        customer = get_or_create_customer(user)
        stripe_customer = self.fake.create_customer(email=f"{name}@example.com")  # type: ignore[attr-defined]
        customer.stripe_customer_id = stripe_customer["id"]
        customer.save(update_fields=["stripe_customer_id"])
        return customer

    def stripe_total(self, customer: BillingCustomer, start: int = 0, end: int = 2**40) -> int:
        return self.fake.metered_quantity(  # type: ignore[attr-defined]
            self.meter.stripe_id, customer.stripe_customer_id, start, end
        )


def ledger_overage(customer: BillingCustomer, **filters: object) -> int:
    """Overage units the outbox holds for ``customer``."""
    rows = OverageReport.objects.filter(customer=customer, **filters)
    return sum(rows.values_list("value", flat=True))


@pytest.fixture
def metered(db, stripe_settings, fake_stripe) -> Metered:
    data = fake_stripe.create_meter(
        display_name="Messages",
        event_name="messages_overage",
        default_aggregation={"formula": "sum"},
    )
    meter = Meter.objects.create(
        stripe_id=data["id"],
        event_name=data["event_name"],
        display_name=data["display_name"],
        review_state=ReviewState.APPROVED,
    )
    price = CatalogPriceFactory(
        stripe_id="price_messages_overage",
        lookup_key="messages_overage",
        unit_amount=1,
        usage_type="metered",
        stripe_meter_id=meter.stripe_id,
    )
    messages = FeatureFactory(key="messages", name="Messages", kind=FeatureKind.METERED)
    team = PlanFactory(key="team", name="Team", is_default=True)
    PlanFeatureFactory(
        plan=team, feature=messages, included=100, allow_overage=True, overage_price=price
    )
    return Metered(meter=meter, feature=messages, fake=fake_stripe)
