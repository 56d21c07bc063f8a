"""Webhook signing and delivery for the fake Stripe server.

Signing follows Stripe's scheme exactly, so ``stripe.Webhook.construct_event``
(and dj-stripe's signature verification) accept what the fake produces:
``Stripe-Signature: t=<unix ts>,v1=<hex HMAC-SHA256("{t}.{body}", secret)>``.

Delivery happens on one background thread, in the order events were queued,
never inside the request handler that caused the event: the application that
called the fake may be single-threaded and busy waiting for that response.

A failed delivery (non-2xx or unreachable) is retried by itself on a schedule,
as Stripe does: :data:`TEST_RETRY_SCHEDULE` (seconds, fast) by default,
:data:`STRIPE_RETRY_SCHEDULE` when the fake runs standalone (Stripe's
sandboxes retry three times over a few hours).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "STRIPE_RETRY_SCHEDULE",
    "TEST_RETRY_SCHEDULE",
    "DeliveryResult",
    "WebhookDispatcher",
    "encode_event",
    "event_matches",
    "sign_webhook_payload",
]

#: Delays (seconds) before each automatic redelivery of a failed event, in tests.
TEST_RETRY_SCHEDULE: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Stripe-like delays for a standalone fake (sandbox: three retries over hours).
STRIPE_RETRY_SCHEDULE: tuple[float, ...] = (5 * 60.0, 30 * 60.0, 2 * 3600.0)

#: An opener that ignores proxy environment variables: deliveries stay local.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sign_webhook_payload(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """Return the ``Stripe-Signature`` header value for ``payload``.

    :param payload: the exact request body that will be sent.
    :param secret: the endpoint's signing secret (``whsec_...``).
    :param timestamp: unix time to sign with; defaults to now.
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signed = f"{ts}.".encode() + payload
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def encode_event(event: dict[str, Any]) -> bytes:
    """Serialise an event the way it is sent as a webhook body."""
    return json.dumps(event, indent=2).encode("utf-8")


def event_matches(enabled_events: list[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to ``enabled_events`` receives ``event_type``."""
    return "*" in enabled_events or event_type in enabled_events


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one webhook delivery attempt."""

    url: str
    event_id: str
    event_type: str
    endpoint_id: str
    status_code: int | None
    """HTTP status of the receiver's answer; ``None`` if the connection failed."""
    error: str | None = None
    delivered_at: float = 0.0

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class _Delivery:
    url: str
    secret: str
    endpoint_id: str
    event: dict[str, Any]
    attempt: int = 1


class WebhookDispatcher:
    """Delivers queued events to endpoints over HTTP from one daemon thread.

    :param retry_schedule: delays before the automatic retries of a failed
        delivery (one retry per entry); ``()`` turns automatic retries off.
    :param on_delivered: called with ``(endpoint_id, event_id)`` after a 2xx.
    """

    def __init__(
        self,
        timeout: float = 10.0,
        clock: Callable[[], int] | None = None,
        retry_schedule: tuple[float, ...] = TEST_RETRY_SCHEDULE,
        on_delivered: Callable[[str, str], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.retry_schedule = tuple(retry_schedule)
        self._on_delivered = on_delivered
        self._timers: list[threading.Timer] = []
        self._clock = clock or (lambda: int(time.time()))
        self._queue: queue.Queue[_Delivery | None] = queue.Queue()
        self._lock = threading.Lock()
        self._results: list[DeliveryResult] = []
        self._failed: list[_Delivery] = []
        self._thread: threading.Thread | None = None
        self._generation = 0

    def start(self) -> None:
        """Start the delivery thread (idempotent)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._run, name="fake-stripe-webhooks", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop the delivery thread after the queue drains."""
        self._cancel_timers()
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=self.timeout + 1)
        self._thread = None

    def enqueue(self, url: str, secret: str, endpoint_id: str, event: dict[str, Any]) -> None:
        """Queue one delivery; it is sent after everything queued before it."""
        self.start()
        self._queue.put(_Delivery(url, secret, endpoint_id, event))

    def flush(self, timeout: float = 10.0) -> list[DeliveryResult]:
        """Wait until every queued delivery was attempted; return all results so far."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("webhook deliveries still pending after flush timeout")
            time.sleep(0.005)
        with self._lock:
            return list(self._results)

    @property
    def results(self) -> list[DeliveryResult]:
        """Every delivery attempt so far, oldest first."""
        with self._lock:
            return list(self._results)

    def retry_failed(self) -> int:
        """Queue every failed delivery again now; return how many were queued."""
        with self._lock:
            failed, self._failed = self._failed, []
        for delivery in failed:
            self._requeue(delivery)
        return len(failed)

    @property
    def pending_retries(self) -> int:
        """Failed deliveries still waiting for a retry (automatic or manual)."""
        with self._lock:
            return len(self._failed)

    def _requeue(self, delivery: _Delivery) -> None:
        self.start()
        self._queue.put(
            _Delivery(
                delivery.url,
                delivery.secret,
                delivery.endpoint_id,
                delivery.event,
                delivery.attempt + 1,
            )
        )

    def _schedule_retry(self, delivery: _Delivery, generation: int) -> None:
        """Under the lock: retry ``delivery`` after its delay, unless retried by hand."""
        if delivery.attempt > len(self.retry_schedule):
            return

        def fire() -> None:
            with self._lock:
                if generation != self._generation or delivery not in self._failed:
                    return
                self._failed.remove(delivery)
            self._requeue(delivery)

        timer = threading.Timer(self.retry_schedule[delivery.attempt - 1], fire)
        timer.daemon = True
        self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _cancel_timers(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    def reset(self) -> None:
        """Drop queued deliveries and forget results."""
        self._cancel_timers()
        with self._lock:
            self._generation += 1
            self._results.clear()
            self._failed.clear()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._queue.task_done()
            if item is None:  # keep a pending stop request
                self._queue.put(None)
                break

    def _run(self) -> None:
        while True:
            delivery = self._queue.get()
            try:
                if delivery is None:
                    return
                with self._lock:
                    generation = self._generation
                result = self._deliver(delivery)
                with self._lock:
                    if generation == self._generation:
                        self._results.append(result)
                        if not result.ok:
                            self._failed.append(delivery)
                            self._schedule_retry(delivery, generation)
                if result.ok and self._on_delivered is not None:
                    self._on_delivered(delivery.endpoint_id, result.event_id)
            finally:
                self._queue.task_done()

    def _deliver(self, delivery: _Delivery) -> DeliveryResult:
        body = encode_event(delivery.event)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": sign_webhook_payload(body, delivery.secret, self._clock()),
        }
        request = urllib.request.Request(delivery.url, data=body, headers=headers, method="POST")
        status: int | None
        error: str | None = None
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status, error = exc.code, str(exc)
        except (urllib.error.URLError, OSError) as exc:
            status, error = None, str(exc)
        return DeliveryResult(
            url=delivery.url,
            event_id=str(delivery.event["id"]),
            event_type=str(delivery.event["type"]),
            endpoint_id=delivery.endpoint_id,
            status_code=status,
            error=error,
            delivered_at=time.time(),
        )
