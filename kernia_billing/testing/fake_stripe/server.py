"""The fake Stripe HTTP server and its Python control surface, :class:`FakeStripe`.

``FakeStripe`` runs a :class:`~http.server.ThreadingHTTPServer` on 127.0.0.1
that answers the subset of Stripe's v1 API a subscription-billing integration
uses, in Stripe's JSON shapes, so the real ``stripe`` SDK and dj-stripe can
talk to it. Tests drive time and lifecycle (renewals, failed payments, checkout
completion) through its methods, and inspect the request log and webhooks.

Typical use::

    with FakeStripe() as fake:
        restore = configure_stripe_sdk(fake.url, api_key="sk_test_" + "x" * 24)
        stripe.Product.create(name="Pro")
        restore()
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Any

from .api import _Api, check_contract, routes
from .handler import Fault, RecordedRequest, _RequestHandler, _Server
from .idempotency import IdempotencyCache
from .listing import expand, paginate
from .sdk import SdkConfiguration, configure_stripe_sdk
from .store import JSON, Store, StripeError, generate_id
from .webhooks import (
    TEST_RETRY_SCHEDULE,
    DeliveryResult,
    WebhookDispatcher,
    encode_event,
    sign_webhook_payload,
)

__all__ = [
    "FakeStripe",
    "Fault",
    "RecordedRequest",
    "SdkConfiguration",
    "configure_stripe_sdk",
    "expand",
    "paginate",
    "routes",
]

_KEY_RE = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]{24,}$")


# ----------------------------------------------------------------------- FakeStripe


class FakeStripe:
    """A stateful fake of the Stripe API on a local port.

    :param host: interface to bind (keep the default: it is a test server).
    :param port: port to bind; ``0`` picks a free one.
    :param api_keys: if given, only these API keys are accepted; otherwise any
        well-formed ``sk_``/``rk_`` test or live key is.
    :param webhook_delivery: deliver events over HTTP to registered endpoints.
    :param webhook_secret: default secret for :meth:`sign_webhook` when no
        endpoint is registered.
    :param webhook_retry_schedule: delays (seconds) of the automatic retries of
        a failed delivery; fast by default, ``()`` for none.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_keys: Iterable[str] | None = None,
        webhook_delivery: bool = True,
        webhook_secret: str | None = None,
        webhook_retry_schedule: tuple[float, ...] = TEST_RETRY_SCHEDULE,
    ) -> None:
        self.host = host
        self.port = port
        self.api_keys = frozenset(api_keys) if api_keys is not None else None
        self.webhook_delivery = webhook_delivery
        self.webhook_secret = webhook_secret or generate_id("whsec_", 32)
        self.store = Store()
        self.dispatcher = WebhookDispatcher(
            clock=self.now,
            retry_schedule=webhook_retry_schedule,
            on_delivered=lambda _endpoint, event_id: self.store.mark_delivered(event_id),
        )
        self.store.add_listener(self._on_event)
        self._api = _Api(self)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log_lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults: list[Fault] = []
        self.idempotency = IdempotencyCache(clock=self.now)
        #: Whether requests Stripe would refuse are expected (see the pytest plugin).
        self.allow_contract_violations = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeStripe:
        """Bind the port and serve on a daemon thread."""
        if self._server is not None:
            return self
        handler = type("FakeStripeHandler", (_RequestHandler,), {"fake": self})
        server = _Server((self.host, self.port), handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self.store.base_url = self.url
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-stripe-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self.dispatcher.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.dispatcher.stop()

    def __enter__(self) -> FakeStripe:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:12111``."""
        return f"http://{self.host}:{self.port}"

    def reset(self) -> None:
        """Clear objects, events, endpoints, request log, faults, idempotency cache and clock."""
        self.store.reset()
        self.dispatcher.reset()
        with self._log_lock:
            self._requests.clear()
            self._faults.clear()
        self.idempotency.reset()
        self.allow_contract_violations = False

    # ------------------------------------------------------------------ request log

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every API request answered since the last reset, oldest first."""
        with self._log_lock:
            return list(self._requests)

    def contract_violations(self) -> list[RecordedRequest]:
        """Requests since the last reset that Stripe would refuse as malformed.

        The fake refused them too (400); this finds them even when the calling
        code swallowed the error.
        """
        return [request for request in self.requests if request.contract_violation is not None]

    def _log(self, request: RecordedRequest) -> None:
        with self._log_lock:
            self._requests.append(request)

    def _check_auth(self, api_key: str | None) -> None:
        if not api_key:
            raise StripeError(
                401,
                "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth "
                "(e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        valid = (
            api_key in self.api_keys if self.api_keys is not None else bool(_KEY_RE.match(api_key))
        )
        if not valid:
            shown = api_key[:8] + "*" * max(0, len(api_key) - 12) + api_key[-4:]
            raise StripeError(401, f"Invalid API Key provided: {shown}")

    # ------------------------------------------------------------------ faults

    def inject_fault(
        self,
        path_prefix: str = "/v1/",
        method: str | None = None,
        status: int | None = 500,
        times: int = 1,
        delay: float = 0.0,
        body: JSON | None = None,
        saved: bool = False,
    ) -> Fault:
        """Make the next ``times`` matching API requests fail with ``status`` after ``delay`` s.

        ``status=None`` only delays the request, then serves it normally. With
        ``saved=True`` the failure happens while the API executes the request:
        Stripe saves it under the idempotency key and replays it on a retry.
        """
        fault = Fault(path_prefix, method, status, times, delay, body, saved)
        with self._log_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._log_lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._log_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ idempotency

    # ------------------------------------------------------------------ clock

    def now(self) -> int:
        """The fake's current unix time (real time unless changed)."""
        return self.store.now()

    def advance_clock(self, seconds: int) -> int:
        """Move the fake's clock forward by ``seconds``; returns the new time."""
        return self.store.advance_clock(seconds)

    def set_clock(self, timestamp: int) -> int:
        """Freeze the fake's clock at ``timestamp``."""
        return self.store.set_clock(timestamp)

    # ------------------------------------------------------------------ seeding & lifecycle

    def create_product(self, **params: Any) -> JSON:
        """Create a product without HTTP (same code path and events as the API)."""
        check_contract("ProductCreateParams", params)
        return self.store.create_product(params)

    def create_price(self, **params: Any) -> JSON:
        """Create a price without HTTP."""
        check_contract("PriceCreateParams", params)
        return self.store.create_price(params)

    def create_meter(self, **params: Any) -> JSON:
        """Create a billing meter without HTTP."""
        check_contract("billing.MeterCreateParams", params)
        return self.store.create_meter(params)

    def metered_quantity(self, meter_id: str, customer: str, start: int, end: int) -> int:
        """What Stripe's summaries say ``customer`` used on ``meter_id`` in ``[start, end)``."""
        return self.store.metered_quantity(meter_id, customer, start, end)

    def create_customer(self, **params: Any) -> JSON:
        """Create a customer without HTTP."""
        check_contract("CustomerCreateParams", params)
        return self.store.create_customer(params)

    def create_subscription(self, *, paid: bool = True, **params: Any) -> JSON:
        """Create a subscription without HTTP, as if in the Dashboard.

        With ``paid`` (the default) and neither ``default_payment_method`` nor
        ``payment_behavior`` given, the customer pays with a new test card (the
        subscription's default payment method), so it starts ``active`` (or
        ``trialing``) and renews as most tests want. ``paid=False`` sends
        exactly ``params``: without a payment method on the customer the
        subscription starts ``incomplete``, as on Stripe.
        """
        check_contract("SubscriptionCreateParams", params)
        if paid and not any(params.get(k) for k in ("default_payment_method", "payment_behavior")):
            card = self.store.create_payment_method(str(params.get("customer") or "") or None)
            params = {**params, "default_payment_method": card["id"]}
        return self.store.create_subscription(params)

    def create_payment_method(self, customer_id: str | None = None) -> JSON:
        """A test card (always succeeds), attached to ``customer_id`` if given."""
        return self.store.create_payment_method(customer_id)

    def set_default_payment_method(self, customer_id: str) -> str:
        """Give the customer a test card as its invoices' default payment method; its id."""
        card = self.store.create_payment_method(customer_id)
        self.store.update_customer(
            customer_id, {"invoice_settings": {"default_payment_method": card["id"]}}
        )
        return str(card["id"])

    def pay_invoice(self, invoice_id: str, payment_method: str | None = None) -> JSON:
        """Pay an open invoice (``POST /v1/invoices/{id}/pay``) without HTTP."""
        params = {"payment_method": payment_method} if payment_method else {}
        return self.store.pay_invoice(invoice_id, params)

    def delete_price(self, price_id: str) -> JSON:
        """Remove a price (dashboard-only on Stripe) and emit ``price.deleted``."""
        return self.store.delete_price(price_id)

    def add_product_feature(
        self, product_id: str, name: str, lookup_key: str | None = None
    ) -> JSON:
        """Attach an entitlement feature to a product."""
        return self.store.add_product_feature(product_id, name, lookup_key)

    def complete_checkout_session(self, session_id: str) -> JSON:
        """Complete a checkout session as the customer paying would."""
        return self.store.complete_checkout_session(session_id)

    def advance_subscription(self, sub_id: str) -> JSON:
        """Move a subscription into its next period (renewal, trial end or scheduled cancel)."""
        return self.store.advance_subscription(sub_id)

    def fail_payment(self, sub_id: str) -> JSON:
        """Fail the subscription's next payment: ``invoice.payment_failed``, ``past_due``."""
        return self.store.fail_payment(sub_id)

    def set_subscription_status(self, sub_id: str, status: str) -> JSON:
        """Force a subscription status, emitting the matching event."""
        return self.store.set_subscription_status(sub_id, status)

    def events(self, type: str | None = None) -> list[JSON]:
        """Recorded events, oldest first, optionally of one type (``*`` wildcards allowed)."""
        return list(reversed(self.store.list_events({"type": type} if type else {})))

    def seed(self, data: JSON) -> list[JSON]:
        """Create meters, products and prices from
        ``{"meters": [...], "products": [{..., "prices": [...]}]}``.

        A metered price may name its meter as ``"meter": "event_name:<event name>"``
        (a seed file cannot know the id Stripe will give the meter).
        """
        created = []
        meters: dict[str, str] = {}
        for meter_data in data.get("meters", []):
            meter = self.create_meter(**meter_data)
            meters[meter["event_name"]] = meter["id"]
            created.append(meter)
        for product_data in data.get("products", []):
            product_params = {k: v for k, v in product_data.items() if k != "prices"}
            product = self.create_product(**product_params)
            created.append(product)
            for price_data in product_data.get("prices", []):
                price_params = with_meter_id(price_data, meters)
                created.append(self.create_price(product=product["id"], **price_params))
        return created

    # ------------------------------------------------------------------ webhooks

    def register_webhook_endpoint(
        self, url: str, secret: str | None = None, enabled_events: Iterable[str] = ("*",)
    ) -> JSON:
        """Register an endpoint for HTTP delivery; the returned object includes ``secret``."""
        return self.store.create_webhook_endpoint(
            {"url": url, "enabled_events": list(enabled_events)}, secret=secret
        )

    def sign_webhook(
        self, event_or_id: JSON | str, secret: str | None = None, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers Stripe would POST for an event.

        ``secret`` defaults to the first registered endpoint's secret, else
        :attr:`webhook_secret`; ``timestamp`` defaults to the fake's clock.
        """
        event = (
            self.store.retrieve("event", event_or_id)
            if isinstance(event_or_id, str)
            else event_or_id
        )
        if secret is None:
            endpoints = self.store.list_objects("webhook_endpoint")
            secret = (
                self.store.webhook_secret(endpoints[-1]["id"]) if endpoints else self.webhook_secret
            )
        body = encode_event(event)
        ts = self.now() if timestamp is None else timestamp
        return body, {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign_webhook_payload(body, secret, ts),
        }

    def _on_event(self, event: JSON) -> None:
        if not self.webhook_delivery:
            return
        for endpoint, secret in self.store.endpoints_for(event["type"]):
            # Each endpoint gets the event in its own API version, else the account's.
            rendered = {**event, "api_version": endpoint["api_version"] or event["api_version"]}
            self.dispatcher.enqueue(endpoint["url"], secret, endpoint["id"], rendered)

    def flush_webhooks(self, timeout: float = 10) -> list[DeliveryResult]:
        """Wait for queued deliveries; return every delivery result since the last reset."""
        return self.dispatcher.flush(timeout)

    @property
    def deliveries(self) -> list[DeliveryResult]:
        """Delivery results so far (without waiting)."""
        return self.dispatcher.results

    def retry_failed_deliveries(self) -> int:
        """Queue failed deliveries again now (not waiting for their schedule); returns how many."""
        return self.dispatcher.retry_failed()


def with_meter_id(price: JSON, meters: dict[str, str]) -> JSON:
    """``price`` with a ``recurring.meter`` of ``event_name:<name>`` replaced by that
    meter's id (from ``meters``, event name -> id); other prices unchanged."""
    recurring = price.get("recurring") or {}
    meter = str(recurring.get("meter", ""))
    if not meter.startswith("event_name:"):
        return price
    event_name = meter.split(":", 1)[1]
    if event_name not in meters:
        raise ValueError(f"seed price {price.get('lookup_key')!r}: no meter {event_name!r}")
    return {**price, "recurring": {**recurring, "meter": meters[event_name]}}
