"""kernia_reconcile: customer state from the mirror / Stripe, and the ledger audit."""

from __future__ import annotations

from io import StringIO

import pytest
import stripe
from django.core.management import call_command

from kernia_billing.models import BillingCustomer, Entitlement
from kernia_billing.services import usage as entitlements
from kernia_billing.services.checkout import ensure_stripe_customer
from kernia_billing.services.ledger_audit import audit_ledger
from kernia_billing.services.reconcile import reconcile_customers
from kernia_billing.testing import FakeStripe
from tests.clock import PERIOD_BREAKS
from tests.factories import UserFactory
from tests.lifecycle import Catalog, Webhooks, plans, webhooks

pytestmark = pytest.mark.clock_matrix(*PERIOD_BREAKS)  # webhook flows: tests/clock.py

__all__ = ["plans", "webhooks"]


def run(*args: str) -> str:
    out = StringIO()
    call_command("kernia_reconcile", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def pro_customer(fake_stripe: FakeStripe, plans: Catalog, webhooks: Webhooks) -> BillingCustomer:
    customer = ensure_stripe_customer(UserFactory())
    fake_stripe.create_subscription(
        customer=customer.stripe_customer_id, items=[{"price": plans.pro_monthly}]
    )
    webhooks.deliver_pending()
    customer.refresh_from_db()
    assert customer.plan == plans.pro
    return customer


@pytest.mark.django_db
def test_nothing_to_report(pro_customer: BillingCustomer) -> None:
    assert reconcile_customers() == []
    assert audit_ledger() == []
    assert "No drift." in run()


@pytest.mark.django_db
def test_customer_drift_from_the_mirror_is_reported_then_fixed(
    plans: Catalog, pro_customer: BillingCustomer
) -> None:
    BillingCustomer.objects.filter(pk=pro_customer.pk).update(
        plan=plans.free, subscription_status="canceled", cancel_at_period_end=True
    )
    output = run()
    assert "plan: stored 'free', expected 'pro'" in output
    assert "subscription_status" in output and "Run with --fix" in output
    assert BillingCustomer.objects.get(pk=pro_customer.pk).plan == plans.free  # report only

    # Without --refresh the mirror may be stale: --fix reports state drift, fixes none.
    output = run("--fix")
    assert "[drift]" in output and "--refresh" in output
    assert BillingCustomer.objects.get(pk=pro_customer.pk).plan == plans.free

    assert "Fixed:" in run("--refresh", "--fix")
    customer = BillingCustomer.objects.get(pk=pro_customer.pk)
    assert (customer.plan, customer.subscription_status) == (plans.pro, "active")
    assert customer.cancel_at_period_end is False
    assert "No drift." in run()


@pytest.mark.django_db
def test_refresh_reads_stripe_when_webhooks_were_missed(
    fake_stripe: FakeStripe, plans: Catalog, pro_customer: BillingCustomer
) -> None:
    stripe.Subscription.modify(pro_customer.stripe_subscription_id, cancel_at_period_end=True)
    # The webhook never arrived: the mirror agrees with the stale row.
    assert reconcile_customers() == []
    drifts = reconcile_customers(refresh=True)
    assert [(d.subject, d.expected, d.actual) for d in drifts] == [
        ("cancel_at_period_end", True, False)
    ]
    run("--refresh", "--fix")
    assert BillingCustomer.objects.get(pk=pro_customer.pk).cancel_at_period_end is True
    assert reconcile_customers() == []  # the mirror was refreshed too


@pytest.mark.django_db
def test_ledger_audit(pro_customer: BillingCustomer) -> None:
    user = pro_customer.owner
    entitlements.track(user, "messages", 40)
    entitlements.track(user, "messages", 2)
    assert audit_ledger() == []
    Entitlement.objects.filter(customer=pro_customer).update(usage=7)
    [drift] = audit_ledger()
    assert (drift.kind, drift.subject, drift.expected, drift.actual) == (
        "ledger",
        "messages",
        42,
        7,
    )
    assert "ledger messages: stored 7, expected 42" in run()
    [fixed] = audit_ledger(fix=True)
    assert fixed.fixed
    assert Entitlement.objects.get(customer=pro_customer).usage == 42
    assert audit_ledger() == []


@pytest.mark.django_db
def test_stripe_outage_is_a_command_error(
    fake_stripe: FakeStripe, pro_customer: BillingCustomer
) -> None:
    from django.core.management.base import CommandError

    fake_stripe.inject_fault("/v1/subscriptions", status=500)
    with pytest.raises(CommandError, match="Stripe"):
        run("--refresh")


@pytest.mark.django_db
def test_fix_without_refresh_never_rolls_state_back_to_a_stale_mirror(
    fake_stripe: FakeStripe, plans: Catalog, pro_customer: BillingCustomer
) -> None:
    from kernia_billing.services.stripe_state import sync_subscription_from_stripe
    from tests.lifecycle import fake_now

    stripe.Subscription.modify(pro_customer.stripe_subscription_id, cancel_at_period_end=True)
    # Our receiver applied the change; dj-stripe's mirror still has the old subscription.
    sync_subscription_from_stripe(
        pro_customer.stripe_subscription_id, state_at=fake_now(fake_stripe)
    )
    assert BillingCustomer.objects.get(pk=pro_customer.pk).cancel_at_period_end is True

    output = run("--fix")

    assert "[drift]" in output and "cancel_at_period_end" in output
    assert "--refresh" in output
    assert BillingCustomer.objects.get(pk=pro_customer.pk).cancel_at_period_end is True
    assert "No drift." in run("--refresh")


@pytest.mark.django_db
def test_fix_without_refresh_still_repairs_the_ledger(pro_customer: BillingCustomer) -> None:
    entitlements.track(pro_customer.owner, "messages", 5)
    Entitlement.objects.filter(customer=pro_customer).update(usage=1)
    output = run("--fix")
    assert "[fixed]" in output and "ledger messages" in output
    assert Entitlement.objects.get(customer=pro_customer).usage == 5


def test_help_says_state_fixes_need_refresh() -> None:
    from kernia_billing.management.commands.kernia_reconcile import Command

    text = Command().create_parser("manage.py", "kernia_reconcile").format_help()
    fix_help = text.split("\n  --fix", 1)[1].split("\n  -", 1)[0]
    assert "--refresh" in fix_help
