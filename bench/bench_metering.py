"""Benchmark of usage reporting: the sender's meter events/s against the fake Stripe, and
what reporting adds to track's hot path (statements per track with and without overage).

Usage::

    .venv/bin/python bench/bench_metering.py --events 2000
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/kernia_bench_meters \\
        .venv/bin/python bench/bench_metering.py

A figure, not a test: nothing here fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
if "DATABASE_URL" not in os.environ:
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from bench.bench_entitlements import DisableMigrations  # noqa: E402


def setup(fake: object) -> object:
    settings.MIGRATION_MODULES = DisableMigrations()
    if connection.vendor == "sqlite":
        connection.settings_dict["TEST"]["NAME"] = f"{tempfile.mkdtemp()}/bench.sqlite3"
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    settings.STRIPE_TEST_SECRET_KEY = "sk_test_fakestripe0000000000000000"
    settings.STRIPE_LIVE_MODE = False

    from kernia_billing.models import CatalogPrice, Feature, Meter, Plan, PlanFeature
    from kernia_billing.services.customers import get_or_create_customer
    from tests.factories import UserFactory

    data = fake.create_meter(  # type: ignore[attr-defined]
        display_name="Messages", event_name="messages", default_aggregation={"formula": "sum"}
    )
    meter = Meter.objects.create(stripe_id=data["id"], event_name="messages")
    price = CatalogPrice.objects.create(
        stripe_id="price_overage",
        currency="usd",
        unit_amount=1,
        usage_type="metered",
        stripe_meter_id=meter.stripe_id,
        review_state="approved",
    )
    messages = Feature.objects.create(key="messages", name="Messages", kind="metered")
    plan = Plan.objects.create(key="bench", name="Bench", is_default=True)
    PlanFeature.objects.create(
        plan=plan,
        feature=messages,
        included=1000,
        reset_period="month",
        allow_overage=True,
        overage_price=price,
    )
    user = UserFactory(username="bench")
    customer = get_or_create_customer(user)
    customer.stripe_customer_id = fake.create_customer()["id"]  # type: ignore[attr-defined]
    customer.save()
    return user


def statements(user: object, amount: int) -> int:
    import kernia_billing

    with CaptureQueriesContext(connection) as queries:
        kernia_billing.track(user, "messages", amount)
    return len(queries.captured_queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="overage events to send")
    args = parser.parse_args()

    from kernia_billing.testing.fake_stripe import FakeStripe, configure_stripe_sdk

    fake = FakeStripe("127.0.0.1", 0).start()
    with configure_stripe_sdk(fake.url, api_key="sk_test_fakestripe0000000000000000"):
        user = setup(fake)
        import kernia_billing
        from kernia_billing.services.metering.sender import send_pending

        kernia_billing.track(user, "messages", 1)  # first use creates the entitlement
        within = statements(user, 1)
        kernia_billing.track(user, "messages", 998)  # the grant is used up
        beyond = statements(user, 1)
        print(f"track statements: within the grant {within}, beyond it {beyond}")
        for _ in range(args.events - 1):
            kernia_billing.track(user, "messages", 1)
        start = time.perf_counter()
        summary = send_pending()
        elapsed = time.perf_counter() - start
        print(
            f"sender: {summary.sent} meter events in {elapsed:.2f} s "
            f"= {summary.sent / elapsed:.0f} events/s ({connection.vendor})"
        )
    fake.stop()


if __name__ == "__main__":
    main()
