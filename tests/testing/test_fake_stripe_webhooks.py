"""Webhook signing and real HTTP delivery from the fake Stripe."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import stripe

from kernia_billing.testing import FakeStripe, sign_webhook_payload


class Receiver:
    """A tiny local webhook receiver that records what it gets."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhook/"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.close()


def test_sign_webhook_payload_verifies_with_the_sdk() -> None:
    payload = json.dumps(
        {"id": "evt_1", "object": "event", "type": "x", "data": {"object": {}}}
    ).encode()
    header = sign_webhook_payload(payload, "whsec_test", timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    stripe.WebhookSignature.verify_header(payload.decode(), header, "whsec_test", tolerance=None)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(
            payload.decode(), header, "whsec_other", tolerance=None
        )


def test_sign_webhook_for_an_event(fake_stripe: FakeStripe) -> None:
    endpoint = fake_stripe.register_webhook_endpoint(
        "http://127.0.0.1:9/unused", secret="whsec_abc"
    )
    fake_stripe.webhook_delivery = False
    product = stripe.Product.create(name="Signed")
    event_id = fake_stripe.events("product.created")[0]["id"]
    body, headers = fake_stripe.sign_webhook(event_id)
    assert headers["Content-Type"].startswith("application/json")
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], endpoint["secret"])
    assert event.id == event_id and event.data.object.id == product.id
    assert event.pending_webhooks == 1
    # The body is exactly what the API returns for the event (dj-stripe compares them).
    assert json.loads(body)["data"] == stripe.Event.retrieve(event_id).to_dict()["data"]

    other_body, other_headers = fake_stripe.sign_webhook(
        json.loads(body), secret="whsec_zzz", timestamp=123
    )
    assert other_headers["Stripe-Signature"].startswith("t=123,")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(other_body, other_headers["Stripe-Signature"], "whsec_zzz")


def test_http_delivery_in_order(fake_stripe: FakeStripe, receiver: Receiver) -> None:
    endpoint = fake_stripe.register_webhook_endpoint(receiver.url)
    stripe.Product.create(name="A")
    stripe.Customer.create(email="a@example.com")
    results = fake_stripe.flush_webhooks(timeout=5)
    assert [r.status_code for r in results] == [200, 200]
    assert all(r.url == receiver.url and r.ok for r in results)
    assert [e["type"] for e in receiver.events()] == ["product.created", "customer.created"]
    headers, body = receiver.received[0]
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], endpoint["secret"])
    assert event.id == results[0].event_id


def test_enabled_events_filter_and_api_created_endpoint(
    fake_stripe: FakeStripe, receiver: Receiver
) -> None:
    endpoint = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=["customer.created"])
    stripe.Product.create(name="ignored")
    customer = stripe.Customer.create()
    results = fake_stripe.flush_webhooks()
    assert [r.event_type for r in results] == ["customer.created"]
    headers, body = receiver.received[0]
    event = stripe.Webhook.construct_event(body, headers["Stripe-Signature"], endpoint.secret)
    assert event.data.object.id == customer.id


def test_delivery_can_be_switched_off(fake_stripe: FakeStripe, receiver: Receiver) -> None:
    fake_stripe.register_webhook_endpoint(receiver.url)
    fake_stripe.webhook_delivery = False
    stripe.Product.create(name="quiet")
    assert fake_stripe.flush_webhooks() == []
    assert receiver.received == []


def test_failed_deliveries_are_recorded_and_retried(fake_stripe: FakeStripe) -> None:
    failing = Receiver(status=500)
    fake_stripe.dispatcher.retry_schedule = ()  # only the manual retry here
    try:
        fake_stripe.register_webhook_endpoint(failing.url)
        stripe.Product.create(name="retry me")
        results = fake_stripe.flush_webhooks()
        assert [r.status_code for r in results] == [500]
        assert len(failing.received) == 1
        failing.status = 200
        assert fake_stripe.retry_failed_deliveries() == 1
        results = fake_stripe.flush_webhooks()
        assert [r.status_code for r in results] == [500, 200]
        assert fake_stripe.retry_failed_deliveries() == 0
    finally:
        failing.close()


def test_unreachable_endpoint_is_recorded(fake_stripe: FakeStripe) -> None:
    dead = Receiver()
    url = dead.url
    dead.close()
    fake_stripe.register_webhook_endpoint(url)
    stripe.Product.create(name="nobody listens")
    [result] = fake_stripe.flush_webhooks()
    assert result.status_code is None and result.error


def test_checkout_completion_is_delivered(fake_stripe: FakeStripe, receiver: Receiver) -> None:
    product = fake_stripe.create_product(name="Pro")
    price = fake_stripe.create_price(
        product=product["id"], unit_amount=900, currency="usd", recurring={"interval": "month"}
    )
    fake_stripe.register_webhook_endpoint(
        receiver.url, enabled_events=["checkout.session.completed", "customer.subscription.created"]
    )
    session = stripe.checkout.Session.create(
        mode="subscription",
        line_items=[{"price": price["id"], "quantity": 1}],
        success_url="https://x",
    )
    fake_stripe.complete_checkout_session(session.id)
    fake_stripe.flush_webhooks()
    assert [e["type"] for e in receiver.events()] == [
        "customer.subscription.created",
        "checkout.session.completed",
    ]


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_failed_deliveries_are_retried_by_themselves(fake_stripe: FakeStripe) -> None:
    failing = Receiver(status=500)
    fake_stripe.dispatcher.retry_schedule = (0.05, 0.05)
    try:
        fake_stripe.register_webhook_endpoint(failing.url)
        stripe.Product.create(name="retry me")
        wait_for(lambda: len(fake_stripe.deliveries) == 3)
        time.sleep(0.2)
        # One delivery and two scheduled retries, then Stripe gives up.
        assert [r.status_code for r in fake_stripe.deliveries] == [500, 500, 500]
        assert fake_stripe.dispatcher.pending_retries == 1
        failing.status = 200
        fake_stripe.dispatcher.retry_schedule = (0.05,)
        assert fake_stripe.retry_failed_deliveries() == 1
        wait_for(lambda: len(fake_stripe.deliveries) == 4)
        assert fake_stripe.deliveries[-1].ok
    finally:
        failing.close()


def test_pending_webhooks_goes_down_as_endpoints_acknowledge(
    fake_stripe: FakeStripe, receiver: Receiver
) -> None:
    failing = Receiver(status=500)
    fake_stripe.dispatcher.retry_schedule = ()
    try:
        fake_stripe.register_webhook_endpoint(receiver.url)
        fake_stripe.register_webhook_endpoint(failing.url)
        stripe.Product.create(name="A")
        fake_stripe.flush_webhooks()
        [event] = stripe.Event.list().data
        assert event.pending_webhooks == 1  # the failing endpoint still waits
    finally:
        failing.close()


def test_deliveries_use_the_endpoints_api_version(
    fake_stripe: FakeStripe, receiver: Receiver
) -> None:
    stripe.WebhookEndpoint.create(
        url=receiver.url, enabled_events=["*"], api_version="2025-03-31.basil"
    )
    stripe.Product.create(name="A", stripe_version="2025-01-27.acacia")
    fake_stripe.flush_webhooks()
    [delivered] = receiver.events()
    assert delivered["api_version"] == "2025-03-31.basil"
    assert stripe.Event.retrieve(delivered["id"]).api_version == "2026-05-27.dahlia"


def test_previous_attributes_is_a_nested_diff(fake_stripe: FakeStripe) -> None:
    customer = stripe.Customer.create(
        email="a@example.com", address={"city": "Paris", "country": "FR"}, metadata={"a": "1"}
    )
    stripe.Customer.modify(customer.id, address={"city": "Lyon"}, metadata={"b": "2"})
    [event] = fake_stripe.events("customer.updated")
    assert event["data"]["previous_attributes"] == {
        "address": {"city": "Paris"},
        "metadata": {"b": None},
    }
