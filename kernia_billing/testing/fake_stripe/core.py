"""The fake Stripe store's plumbing: errors, ids, templates, time, helpers, lookups.

Every mutation goes through a :class:`Store` method that holds the store's one
lock, records the Stripe :class:`Event` the change would trigger and notifies
listeners (the webhook dispatcher) in the same order. The HTTP layer
(:mod:`.server`) and the Python helpers on ``FakeStripe`` call the same methods.

Objects are plain JSON-compatible dicts built from Stripe's own fixture objects
(``resources.json``), so they carry every key the real API returns. Callers get
deep copies; the store's own dicts never leave the lock.
"""

from __future__ import annotations

import calendar
import copy
import datetime as dt
import json
import secrets
import string
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .errors import StripeError
from .forms import FormError, coerce_bool, coerce_int

__all__ = [
    "DEFAULT_API_VERSION",
    "JSON",
    "SUBSCRIPTION_STATUSES",
    "RequestContext",
    "StoreCore",
    "StripeError",
    "generate_id",
    "load_templates",
    "period_boundary",
    "template",
]

JSON = dict[str, Any]
_T = TypeVar("_T")

DEFAULT_API_VERSION = "2026-05-27.dahlia"

_TEMPLATES_PATH = Path(__file__).with_name("resources.json")
_ALPHANUM = string.ascii_letters + string.digits

SUBSCRIPTION_STATUSES = frozenset(
    {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
)


def load_templates() -> dict[str, JSON]:
    """Load the fixture objects new resources are built from."""
    with _TEMPLATES_PATH.open(encoding="utf-8") as handle:
        resources: dict[str, JSON] = json.load(handle)["resources"]
    return resources


_TEMPLATES = load_templates()


def template(kind: str) -> JSON:
    """A fresh deep copy of Stripe's fixture object for ``kind``."""
    return copy.deepcopy(_TEMPLATES[kind])


def generate_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: ``prefix`` plus random alphanumerics."""
    return prefix + "".join(secrets.choice(_ALPHANUM) for _ in range(length))


@dataclass(frozen=True)
class RequestContext:
    """What an event records about the API request that caused it."""

    request_id: str | None = None
    idempotency_key: str | None = None
    api_version: str | None = None


# --------------------------------------------------------------------------- time


def _add_months(anchor: int, months: int) -> int:
    """``anchor`` plus ``months`` calendar months, clamped to the month's last day."""
    moment = dt.datetime.fromtimestamp(anchor, tz=dt.UTC)
    years, month0 = divmod(moment.month - 1 + months, 12)
    year, month = moment.year + years, month0 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def period_boundary(anchor: int, interval: str, interval_count: int, n: int) -> int:
    """The start of billing period ``n`` for a cycle anchored at ``anchor``.

    Periods are computed from the anchor, not chained, so an anchor on Jan 31
    gives Feb 28 (or 29) and then Mar 31, as on Stripe.
    """
    steps = n * interval_count
    if interval == "day":
        return anchor + steps * 86400
    if interval == "week":
        return anchor + steps * 7 * 86400
    if interval == "month":
        return _add_months(anchor, steps)
    if interval == "year":
        return _add_months(anchor, 12 * steps)
    raise ValueError(f"unknown interval {interval!r}")


# --------------------------------------------------------------------------- helpers


def _require(params: JSON, name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise StripeError.required(name)
    return value


def _int(value: Any, param: str) -> int:
    try:
        return coerce_int(value, param)
    except FormError as exc:
        raise StripeError(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param
        ) from exc


def _bool(value: Any, param: str) -> bool:
    try:
        return coerce_bool(value, param)
    except FormError as exc:
        raise StripeError(
            400, f"Invalid boolean: {value}", code="parameter_invalid_boolean", param=param
        ) from exc


def _merge_metadata(current: JSON | None, update: Any, param: str = "metadata") -> JSON:
    """Apply a metadata update: ``""`` for the whole map or a value unsets."""
    result = dict(current or {})
    if update is None:
        return result
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise StripeError.invalid("Invalid hash", param=param, code="parameter_invalid_hash")
    for key, value in update.items():
        if value in ("", None):
            result.pop(key, None)
        else:
            result[key] = str(value)
    return result


def _str_list(value: Any, param: str) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise StripeError.invalid("Invalid array", param=param, code="parameter_invalid_array")


def _diff(before: JSON, after: JSON) -> JSON:
    """Stripe's ``previous_attributes``: the previous values of what changed, nested.

    Hashes are compared key by key (``{"cancellation_details": {"reason": None}}``);
    arrays and scalars that changed are given whole; keys that did not exist
    before are given as ``None``.
    """
    changes: JSON = {}
    for key in [*before, *(k for k in after if k not in before)]:
        if key == "updated":
            continue
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changes[key] = _diff(old, new)
        else:
            changes[key] = copy.deepcopy(old)
    return changes


def _snapshot(obj: _T) -> _T:
    """A detached JSON-compatible copy."""
    copied: _T = json.loads(json.dumps(obj))
    return copied


def _match_created(value: int, spec: Any) -> bool:
    if isinstance(spec, dict):
        ops: dict[str, Callable[[int, int], bool]] = {
            "gt": lambda a, b: a > b,
            "gte": lambda a, b: a >= b,
            "lt": lambda a, b: a < b,
            "lte": lambda a, b: a <= b,
        }
        for op, bound in spec.items():
            if op not in ops:
                raise StripeError(
                    400,
                    f"Received unknown parameter: created[{op}]",
                    code="parameter_unknown",
                    param=f"created[{op}]",
                )
            if not ops[op](value, _int(bound, f"created[{op}]")):
                return False
        return True
    return value == _int(spec, "created")


# --------------------------------------------------------------------------- store


_NOUNS = {
    "product": "product",
    "price": "price",
    "customer": "customer",
    "subscription": "subscription",
    "invoice": "invoice",
    "invoiceitem": "invoiceitem",
    "payment_intent": "payment_intent",
    "payment_method": "PaymentMethod",
    "checkout.session": "checkout.session",
    "billing_portal.session": "billing_portal.session",
    "webhook_endpoint": "webhook endpoint",
    "event": "event",
    "billing.meter": "billing.meter",
    "customer_balance_transaction": "customer balance transaction",
    # plan changes
    "subscription_schedule": "subscription_schedule",
    "billing_portal.configuration": "billing_portal.configuration",
    "charge": "charge",
    "refund": "refund",
}

_PREFIXES = {
    "prod_": "product",
    "price_": "price",
    "cus_": "customer",
    "sub_sched_": "subscription_schedule",  # before sub_: the longer prefix first
    "sub_": "subscription",
    "in_": "invoice",
    "ii_": "invoiceitem",
    "pi_": "payment_intent",
    "pm_": "payment_method",
    "cs_": "checkout.session",
    "bps_": "billing_portal.session",
    "we_": "webhook_endpoint",
    "evt_": "event",
    "mtr_": "billing.meter",
    "cbtxn_": "customer_balance_transaction",
    "bpc_": "billing_portal.configuration",
    "ch_": "charge",
    "re_": "refund",
}


class StoreCore:
    """Plumbing every resource family shares: the lock, objects, events, clock.

    :param base_url: the fake server's URL, used for hosted page URLs.
    """

    def __init__(self, base_url: str = "http://127.0.0.1") -> None:
        self.base_url = base_url.rstrip("/")
        self.lock = threading.RLock()
        self._context = threading.local()
        self._listeners: list[Callable[[JSON], None]] = []
        self.reset()

    # ----------------------------------------------------------------- plumbing

    def reset(self) -> None:
        """Forget every object, event and clock adjustment."""
        with self.lock:
            self._objects: dict[str, dict[str, JSON]] = {kind: {} for kind in _NOUNS}
            self._deleted_customers: set[str] = set()
            self._item_index: dict[str, str] = {}  # si_ -> sub_
            self._period_no: dict[str, int] = {}  # si_ -> period number (-1 = trial)
            self._line_items: dict[str, list[JSON]] = {}  # cs_ -> checkout line items
            self._invoice_intents: dict[str, str] = {}  # in_ -> pi_
            self._features: dict[str, list[JSON]] = {}  # prod_ -> product features
            self._webhook_secrets: dict[str, str] = {}
            self._frozen_time: int | None = None
            self._time_offset = 0
            self._sequence = 0
            self.account_api_version = DEFAULT_API_VERSION
            self.account = self._new_account()

    def add_listener(self, listener: Callable[[JSON], None]) -> None:
        """Call ``listener(event)`` (under the lock, in order) for each new event."""
        self._listeners.append(listener)

    @contextmanager
    def request_context(self, context: RequestContext) -> Iterator[None]:
        """Attribute events created in this block to an API request."""
        previous = getattr(self._context, "value", None)
        self._context.value = context
        try:
            yield
        finally:
            self._context.value = previous

    @property
    def _ctx(self) -> RequestContext:
        value = getattr(self._context, "value", None)
        return value if isinstance(value, RequestContext) else RequestContext()

    def _created(self) -> int:
        return self.now()

    def _bucket(self, kind: str) -> dict[str, JSON]:
        return self._objects[kind]

    def _get(self, kind: str, object_id: str, param: str | None = "id") -> JSON:
        obj = self._objects[kind].get(object_id)
        if obj is None:
            raise StripeError.missing(_NOUNS[kind], object_id, param)
        return obj

    def _emit(self, event_type: str, obj: JSON, previous: JSON | None = None) -> JSON:
        ctx = self._ctx
        endpoints = [
            we
            for we in self._bucket("webhook_endpoint").values()
            if we["status"] == "enabled"
            and ("*" in we["enabled_events"] or event_type in we["enabled_events"])
        ]
        event = template("event")
        event.update(
            id=generate_id("evt_"),
            # Stripe renders events in the account's API version (and each
            # delivery in its endpoint's), never in the triggering request's.
            api_version=self.account_api_version,
            created=self.now(),
            data={"object": _snapshot(obj)},
            livemode=False,
            pending_webhooks=len(endpoints),
            request={"id": ctx.request_id, "idempotency_key": ctx.idempotency_key},
            type=event_type,
        )
        if previous:
            event["data"]["previous_attributes"] = _snapshot(previous)
        self._bucket("event")[event["id"]] = event
        for listener in self._listeners:
            listener(_snapshot(event))
        return event

    def mark_delivered(self, event_id: str) -> None:
        """One endpoint acknowledged ``event_id``: ``pending_webhooks`` goes down."""
        with self.lock:
            event = self._objects["event"].get(event_id)
            if event is not None and event["pending_webhooks"] > 0:
                event["pending_webhooks"] -= 1

    # ----------------------------------------------------------------- clock

    def now(self) -> int:
        """The store's current unix time."""
        with self.lock:
            if self._frozen_time is not None:
                return self._frozen_time
            return int(time.time()) + self._time_offset

    def set_clock(self, timestamp: int) -> int:
        """Freeze the clock at ``timestamp``."""
        with self.lock:
            self._frozen_time = int(timestamp)
            return self._frozen_time

    def advance_clock(self, seconds: int) -> int:
        """Move the clock forward (it stays frozen if it was)."""
        with self.lock:
            if self._frozen_time is not None:
                self._frozen_time += int(seconds)
            else:
                self._time_offset += int(seconds)
            return self.now()

    # ----------------------------------------------------------------- lookups

    def resolve(self, object_id: str) -> JSON | None:
        """The current object for an id of any served kind (for ``expand``)."""
        with self.lock:
            if object_id == self.account["id"]:
                return _snapshot(self.account)
            if object_id.startswith("si_") and object_id in self._item_index:
                return self.retrieve_subscription_item(object_id)
            if object_id.startswith("cus_") and object_id in self._deleted_customers:
                return {"id": object_id, "object": "customer", "deleted": True}
            for prefix, kind in _PREFIXES.items():
                if object_id.startswith(prefix):
                    obj = self._objects[kind].get(object_id)
                    return _snapshot(obj) if obj is not None else None
            return None

    def retrieve(self, kind: str, object_id: str) -> JSON:
        """Retrieve any stored object by kind, or raise a 404."""
        with self.lock:
            if kind == "customer" and object_id in self._deleted_customers:
                return {"id": object_id, "object": "customer", "deleted": True}
            return _snapshot(self._get(kind, object_id))

    def list_objects(
        self, kind: str, predicate: Callable[[JSON], bool] | None = None
    ) -> list[JSON]:
        """Objects of ``kind``, newest first, optionally filtered."""
        with self.lock:
            items = list(reversed(self._objects[kind].values()))
            return [_snapshot(obj) for obj in items if predicate is None or predicate(obj)]

    # ----------------------------------------------------------------- account

    def _new_account(self) -> JSON:
        account = template("account")
        account_id = generate_id("acct_", 16)
        account.update(
            id=account_id,
            business_profile={**account["business_profile"], "name": "Kernia Fake Stripe"},
            business_type="company",
            charges_enabled=True,
            created=int(time.time()),
            details_submitted=True,
            email="owner@example.com",
            payouts_enabled=True,
            type="standard",
            tos_acceptance={"date": None, "ip": None, "user_agent": None},
        )
        account["external_accounts"]["url"] = f"/v1/accounts/{account_id}/external_accounts"
        account["requirements"].update(currently_due=[], eventually_due=[], disabled_reason=None)
        account["settings"]["dashboard"]["display_name"] = "Kernia Fake Stripe"
        return account

    def retrieve_account(self) -> JSON:
        """The (single) account the fake serves."""
        with self.lock:
            return _snapshot(self.account)

    # ----------------------------------------------------------------- hooks

    def retrieve_subscription_item(self, item_id: str) -> JSON:
        """GET /v1/subscription_items/{id} (served by the subscriptions layer)."""
        raise NotImplementedError

    def metered_quantity(self, meter_id: str, customer: str, start: int, end: int) -> int:
        """A meter's total for a customer over ``[start, end)`` (served by the meters layer)."""
        raise NotImplementedError

    def _item_period(self, sub: JSON, price: JSON, n: int) -> tuple[int, int]:
        """Start and end of an item's period ``n`` (served by the subscriptions layer)."""
        raise NotImplementedError

    def _cancel_subscription_locked(
        self, sub: JSON, reason: str = "cancellation_requested"
    ) -> JSON:
        raise NotImplementedError
