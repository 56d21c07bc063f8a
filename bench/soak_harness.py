"""The soak's world: a Stripe catalog in a fake Stripe, subscribed customers, signed
deliveries to the gunicorn server, and the PostgreSQL server log read by byte offset.

- :func:`prepare` creates, in the fake, one product and monthly price per paid plan, then
  (in a subprocess, so the caller's Django is untouched) a fresh database with the
  billing tables, the catalog imported and mapped as an operator would, users with
  tokens, their Stripe customers and dj-stripe's webhook endpoint row.
- :class:`Deliverer` POSTs fake events, signed now, to dj-stripe's endpoint on the server.
- :class:`PostgresLog` counts ``deadlock detected`` lines that name one database in
  the part of the server log written since it was opened.

Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import http_harness as harness

#: Where Debian's PostgreSQL writes its server log; override with ``KERNIA_PG_LOG``.
DEFAULT_PG_LOG = "/var/log/postgresql/postgresql-15-main.log"
PAID_PLANS = ("pro", "business")


def prepare(url: str, fake: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh database at ``url`` for ``spec``, its Stripe side in ``fake``.

    ``spec = {"customers": 8, "included": {"free": 50, "pro": 600, "business": 1500}}``.
    Returns the spec plus ``prices`` (plan -> price id), ``tokens``, ``stripe_customers``
    (in the same order) and ``webhook_uuid``.
    """
    world = dict(spec)
    world["prices"] = {}
    for plan in PAID_PLANS:
        product = fake.create_product(name=plan.title())
        price = fake.create_price(
            product=product["id"],
            unit_amount=1000 * (1 + len(world["prices"])),
            currency="usd",
            recurring={"interval": "month"},
        )
        world["prices"][plan] = price["id"]
    endpoint = fake.register_webhook_endpoint("http://127.0.0.1/stripe/webhook/")
    world["endpoint"] = {k: endpoint[k] for k in ("id", "secret", "url")}
    harness.recreate_database(url)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "STRIPE_API_BASE": fake.url,
    }
    out = subprocess.run(
        [harness.PYTHON, "-m", "bench.soak_harness", "build", json.dumps(world)],
        cwd=harness.ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"building the soak database failed:\n{out.stderr[-4000:]}")
    world.update(json.loads(out.stdout.strip().splitlines()[-1]))
    return world


def _build(world: dict[str, Any]) -> dict[str, Any]:
    """(subprocess) Tables, catalog imported and mapped, users, Stripe customers, endpoint."""
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    class NoMigrations(dict):
        def __contains__(self, item: object) -> bool:
            return True

        def __getitem__(self, item: str) -> None:
            return None

    settings.MIGRATION_MODULES = NoMigrations()
    call_command("migrate", run_syncdb=True, verbosity=0)

    import stripe
    from django.contrib.auth import get_user_model
    from djstripe.models import WebhookEndpoint
    from rest_framework.authtoken.models import Token

    from kernia_billing.models import (
        CatalogPrice,
        Feature,
        Plan,
        PlanFeature,
        PlanPrice,
        ReviewState,
    )
    from kernia_billing.services import catalog
    from kernia_billing.services.checkout import ensure_stripe_customer

    messages = Feature.objects.create(key="messages", name="Messages", kind="metered")
    for order, (key, included) in enumerate(world["included"].items()):
        plan = Plan.objects.create(
            key=key, name=key.title(), is_default=order == 0, display_order=order
        )
        PlanFeature.objects.create(
            plan=plan, feature=messages, included=included, reset_period="billing"
        )
        price_id = world["prices"].get(key)
        if price_id is None:
            continue
        key = settings.STRIPE_TEST_SECRET_KEY
        price = stripe.Price.retrieve(price_id, api_key=key)
        catalog.apply_stripe_product(stripe.Product.retrieve(str(price["product"]), api_key=key))
        catalog.apply_stripe_price(price)
        row = CatalogPrice.objects.get(stripe_id=price_id)
        row.review_state = ReviewState.APPROVED
        row.reviewed_fingerprint = row.fingerprint
        row.save()
        PlanPrice.objects.create(plan=plan, price=row)

    user_model = get_user_model()
    tokens, stripe_customers = [], []
    for index in range(world["customers"]):
        user = user_model.objects.create(username=f"soak-{index}", email=f"soak-{index}@x.test")
        stripe_customers.append(ensure_stripe_customer(user).stripe_customer_id)
        tokens.append(Token.objects.create(user=user).key)
    remote = world["endpoint"]
    endpoint = WebhookEndpoint.objects.create(
        id=remote["id"],
        livemode=False,
        secret=remote["secret"],
        url=remote["url"],
        enabled_events=["*"],
        status="enabled",
        api_version="",
    )
    return {
        "tokens": tokens,
        "stripe_customers": stripe_customers,
        "webhook_uuid": str(endpoint.djstripe_uuid),
    }


class Deliverer:
    """Signed deliveries of the fake's events to dj-stripe's endpoint on the server.

    Signed with the real time (dj-stripe refuses signatures older than 5 minutes), whatever
    the fake's clock says; one connection per delivery, so copies can run concurrently.
    """

    def __init__(self, fake: Any, port: int, world: dict[str, Any]) -> None:
        self.fake = fake
        self.port = port
        self.secret = world["endpoint"]["secret"]
        self.path = f"/stripe/webhook/{world['webhook_uuid']}/"

    def deliver(self, event: dict[str, Any]) -> tuple[int, float]:
        body, headers = self.fake.sign_webhook(
            event, secret=self.secret, timestamp=int(time.time())
        )
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        started = time.perf_counter()
        try:
            conn.request("POST", self.path, body, headers)
            response = conn.getresponse()
            response.read()
            return response.status, (time.perf_counter() - started) * 1000
        finally:
            conn.close()


class PostgresLog:
    """Deadlocks in the PostgreSQL server log since :meth:`open`, for one database.

    Lines are matched on the ``user@database`` of the default Debian ``log_line_prefix``
    (``%m [%p] %q%u@%d``), so other databases' deadlocks on a shared server do not count.
    """

    def __init__(self, database: str, path: str | None = None) -> None:
        self.database = database
        self.path = Path(path or os.environ.get("KERNIA_PG_LOG") or DEFAULT_PG_LOG)
        self.offset: int | None = None
        self.unreadable: str | None = None

    def open(self) -> PostgresLog:
        try:
            with self.path.open("rb") as log:
                self.offset = log.seek(0, os.SEEK_END)
        except OSError as error:
            self.unreadable = f"PostgreSQL log {self.path} not readable ({error.strerror})"
        return self

    def written(self) -> str:
        """What the server logged since :meth:`open` (a rotated log is read from its start)."""
        if self.offset is None:
            return ""
        with self.path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(self.offset if size >= self.offset else 0)
            return log.read().decode("utf-8", errors="replace")

    def deadlocks(self) -> tuple[int, int]:
        """``(in our database, in any database)`` since :meth:`open`."""
        ours = re.compile(rf"@{re.escape(self.database)}\b.*deadlock detected")
        lines = [line for line in self.written().splitlines() if "deadlock detected" in line]
        return sum(1 for line in lines if ours.search(line)), len(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(harness.ROOT))
    if sys.argv[1] != "build":
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
    print(json.dumps(_build(json.loads(sys.argv[2]))))
