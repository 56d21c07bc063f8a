"""Run the fake Stripe server: ``python -m kernia_billing.testing.fake_stripe``.

Options::

    --host 127.0.0.1 --port 12111
    --webhook-url URL --webhook-secret whsec_...   deliver every event to URL
    --seed PATH                                    create meters/products/prices from JSON
    --api-key KEY (repeatable)                     accept only these keys

The seed file looks like (a metered price names its meter by event name)::

    {"meters": [{"display_name": "Messages", "event_name": "messages",
                 "default_aggregation": {"formula": "sum"}}],
     "products": [{"name": "Pro", "metadata": {"tier": "pro"},
                   "prices": [{"unit_amount": 2000, "currency": "usd",
                               "recurring": {"interval": "month"},
                               "lookup_key": "pro_monthly"},
                              {"unit_amount": 1, "currency": "usd",
                               "recurring": {"interval": "month", "usage_type": "metered",
                                             "meter": "event_name:messages"},
                               "lookup_key": "messages_overage"}]}]}
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from .server import FakeStripe
from .webhooks import STRIPE_RETRY_SCHEDULE


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, start the server and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m kernia_billing.testing.fake_stripe",
        description="A local, stateful fake of the Stripe API (test mode only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--webhook-url", help="deliver every event to this URL")
    parser.add_argument("--webhook-secret", help="signing secret for --webhook-url (whsec_...)")
    parser.add_argument("--seed", type=Path, help="JSON file of products and prices to create")
    parser.add_argument("--api-key", action="append", dest="api_keys", help="accept only this key")
    args = parser.parse_args(argv)

    fake = FakeStripe(
        args.host, args.port, api_keys=args.api_keys, webhook_retry_schedule=STRIPE_RETRY_SCHEDULE
    )
    fake.start()
    if args.webhook_url:
        endpoint = fake.register_webhook_endpoint(args.webhook_url, secret=args.webhook_secret)
        print(f"webhooks -> {args.webhook_url} (secret {endpoint['secret']})", flush=True)
    if args.seed:
        created = fake.seed(json.loads(args.seed.read_text(encoding="utf-8")))
        print(f"seeded {len(created)} objects from {args.seed}", flush=True)
    print(f"Fake Stripe listening on {fake.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
