"""In-memory state of the fake Stripe: resources, ids, pagination, events, clock.

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
import re
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
    "RequestContext",
    "Store",
    "StripeError",
    "generate_id",
    "load_templates",
    "period_boundary",
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
    """Stripe's ``previous_attributes``: old values of the top-level keys that changed."""
    return {
        key: copy.deepcopy(before.get(key))
        for key in after
        if key not in ("updated",) and before.get(key) != after.get(key)
    }


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


_SEARCH_CLAUSE = re.compile(
    r"\s*(-?)(email|name|phone|description|metadata\['[^']+'\])\s*([:~])\s*'([^']*)'\s*"
)


def _parse_search(query: str) -> tuple[list[tuple[bool, str, str, str]], str]:
    """Split a search query into ``(negate, field, op, value)`` clauses and the joiner."""
    clauses: list[tuple[bool, str, str, str]] = []
    joiners: set[str] = set()
    rest = query
    while True:
        match = _SEARCH_CLAUSE.match(rest)
        if not match:
            raise StripeError.invalid(
                f"Invalid search query: {query!r}. See https://stripe.com/docs/search#search-query-language.",
                param="query",
            )
        clauses.append((match.group(1) == "-", match.group(2), match.group(3), match.group(4)))
        rest = rest[match.end() :]
        if not rest.strip():
            break
        joiner = re.match(r"(AND|OR)\s+", rest)
        if not joiner:
            raise StripeError.invalid(f"Invalid search query: {query!r}.", param="query")
        joiners.add(joiner.group(1))
        rest = rest[joiner.end() :]
    if len(joiners) > 1:
        raise StripeError.invalid("Search queries cannot mix AND and OR clauses.", param="query")
    return clauses, joiners.pop() if joiners else "AND"


# --------------------------------------------------------------------------- store


_NOUNS = {
    "product": "product",
    "price": "price",
    "customer": "customer",
    "subscription": "subscription",
    "invoice": "invoice",
    "invoiceitem": "invoiceitem",
    "payment_intent": "payment_intent",
    "checkout.session": "checkout.session",
    "billing_portal.session": "billing_portal.session",
    "webhook_endpoint": "webhook endpoint",
    "event": "event",
}

_PREFIXES = {
    "prod_": "product",
    "price_": "price",
    "cus_": "customer",
    "sub_": "subscription",
    "in_": "invoice",
    "ii_": "invoiceitem",
    "pi_": "payment_intent",
    "cs_": "checkout.session",
    "bps_": "billing_portal.session",
    "we_": "webhook_endpoint",
    "evt_": "event",
}


class Store:
    """Thread-safe in-memory Stripe account.

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
            self._features: dict[str, list[JSON]] = {}  # prod_ -> product features
            self._webhook_secrets: dict[str, str] = {}
            self._frozen_time: int | None = None
            self._time_offset = 0
            self._sequence = 0
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
            api_version=ctx.api_version or DEFAULT_API_VERSION,
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

    # ----------------------------------------------------------------- products

    _PRODUCT_FIELDS = (
        "active",
        "description",
        "images",
        "marketing_features",
        "metadata",
        "name",
        "package_dimensions",
        "shippable",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
    )

    def _apply_product_fields(self, product: JSON, params: JSON) -> None:
        for key in self._PRODUCT_FIELDS:
            if key not in params:
                continue
            value = params[key]
            if key == "metadata":
                product["metadata"] = _merge_metadata(product.get("metadata"), value)
            elif key in ("active", "shippable"):
                product[key] = None if value == "" else _bool(value, key)
            elif key == "images":
                product[key] = _str_list(value, key)
            elif key == "marketing_features":
                features = value if isinstance(value, list) else []
                product[key] = [
                    {"name": str(f.get("name", ""))} for f in features if isinstance(f, dict)
                ]
            elif key == "package_dimensions":
                product[key] = None if value == "" else value
            else:
                product[key] = None if value == "" else str(value)

    def create_product(self, params: JSON) -> JSON:
        """POST /v1/products."""
        name = _require(params, "name")
        with self.lock:
            product_id = str(params.get("id") or generate_id("prod_", 14))
            if product_id in self._bucket("product"):
                raise StripeError(
                    400,
                    f"Product already exists with id {product_id}",
                    code="resource_already_exists",
                    param="id",
                )
            now = self._created()
            product = template("product")
            product.update(
                id=product_id,
                name=str(name),
                created=now,
                updated=now,
                active=True,
                default_price=None,
                description=None,
                images=[],
                marketing_features=[],
                metadata={},
                package_dimensions=None,
                shippable=None,
                livemode=False,
                statement_descriptor=None,
                tax_code=None,
                type="service",
                unit_label=None,
                url=None,
            )
            self._apply_product_fields(product, params)
            self._bucket("product")[product_id] = product
            self._features[product_id] = []
            self._emit("product.created", product)
            price_data = params.get("default_price_data")
            if isinstance(price_data, dict):
                price = self._create_price_locked({**price_data, "product": product_id})
                before = copy.deepcopy(product)
                product["default_price"] = price["id"]
                self._emit("product.updated", product, _diff(before, product))
            return _snapshot(product)

    def update_product(self, product_id: str, params: JSON) -> JSON:
        """POST /v1/products/{id}."""
        with self.lock:
            product = self._get("product", product_id)
            before = copy.deepcopy(product)
            self._apply_product_fields(product, params)
            if "default_price" in params:
                price_id = params["default_price"] or None
                if price_id is not None:
                    price = self._get("price", str(price_id), "default_price")
                    if price["product"] != product_id:
                        raise StripeError.invalid(
                            "The price must belong to this product.", param="default_price"
                        )
                product["default_price"] = price_id
            changes = _diff(before, product)
            if changes:
                product["updated"] = self.now()
                self._emit("product.updated", product, changes)
            return _snapshot(product)

    def delete_product(self, product_id: str) -> JSON:
        """DELETE /v1/products/{id}: only products without prices, as on Stripe."""
        with self.lock:
            product = self._get("product", product_id)
            if any(p["product"] == product_id for p in self._bucket("price").values()):
                raise StripeError.invalid(
                    "This product cannot be deleted because it has one or more user-created "
                    "prices.",
                    code="resource_in_use",
                )
            del self._bucket("product")[product_id]
            self._features.pop(product_id, None)
            self._emit("product.deleted", product)
            return {"id": product_id, "object": "product", "deleted": True}

    def list_product_features(self, product_id: str) -> list[JSON]:
        """GET /v1/products/{id}/features: empty unless added with :meth:`add_product_feature`."""
        with self.lock:
            self._get("product", product_id)
            return _snapshot(list(reversed(self._features.get(product_id, []))))

    def add_product_feature(
        self, product_id: str, name: str, lookup_key: str | None = None
    ) -> JSON:
        """Attach an entitlement feature to a product (test helper)."""
        with self.lock:
            self._get("product", product_id)
            feature = template("product_feature")
            feature.update(
                id=generate_id("prodft_"),
                livemode=False,
                entitlement_feature={
                    "id": generate_id("feat_"),
                    "object": "entitlements.feature",
                    "active": True,
                    "livemode": False,
                    "lookup_key": lookup_key or name.lower().replace(" ", "-"),
                    "metadata": {},
                    "name": name,
                },
            )
            self._features.setdefault(product_id, []).append(feature)
            return _snapshot(feature)

    # ----------------------------------------------------------------- prices

    def _claim_lookup_key(self, price_id: str, lookup_key: str, transfer: bool) -> None:
        for other in self._bucket("price").values():
            if other["id"] != price_id and other.get("lookup_key") == lookup_key:
                if not transfer:
                    raise StripeError.invalid(
                        f"A price (`{other['id']}`) already uses that lookup key.",
                        param="lookup_key",
                    )
                before = copy.deepcopy(other)
                other["lookup_key"] = None
                self._emit("price.updated", other, _diff(before, other))

    def _create_price_locked(self, params: JSON) -> JSON:
        currency = str(_require(params, "currency")).lower()
        if params.get("product_data") is not None:
            data = params["product_data"]
            if not isinstance(data, dict):
                raise StripeError.invalid("Invalid hash", param="product_data")
            product = self.create_product(
                {
                    k: v
                    for k, v in data.items()
                    if k
                    in (
                        "name",
                        "active",
                        "metadata",
                        "statement_descriptor",
                        "tax_code",
                        "unit_label",
                        "id",
                    )
                }
            )
            product_id = product["id"]
        else:
            product_id = str(_require(params, "product"))
            self._get("product", product_id, "product")
        if "unit_amount" in params:
            unit_amount: int | None = _int(params["unit_amount"], "unit_amount")
            if unit_amount is not None and unit_amount < 0:
                raise StripeError.invalid(
                    "This value must be greater than or equal to 0.", param="unit_amount"
                )
        elif "unit_amount_decimal" in params:
            unit_amount = int(float(params["unit_amount_decimal"]))
        elif params.get("custom_unit_amount") is not None:
            unit_amount = None
        else:
            raise StripeError.required("unit_amount")
        recurring = None
        if params.get("recurring") not in (None, ""):
            raw = params["recurring"]
            if not isinstance(raw, dict):
                raise StripeError.invalid("Invalid hash", param="recurring")
            interval = str(_require(raw, "interval")) if raw.get("interval") else None
            if interval is None:
                raise StripeError.required("recurring[interval]")
            if interval not in ("day", "week", "month", "year"):
                raise StripeError.invalid(
                    "Invalid recurring[interval]: must be one of day, week, month, or year",
                    param="recurring[interval]",
                )
            trial_days = raw.get("trial_period_days")
            recurring = {
                "interval": interval,
                "interval_count": _int(raw.get("interval_count", 1), "recurring[interval_count]"),
                "meter": raw.get("meter"),
                "trial_period_days": _int(trial_days, "recurring[trial_period_days]")
                if trial_days
                else None,
                "usage_type": str(raw.get("usage_type", "licensed")),
            }
        price = template("price")
        price.update(
            id=generate_id("price_"),
            active=_bool(params.get("active", True), "active"),
            billing_scheme=str(params.get("billing_scheme", "per_unit")),
            created=self._created(),
            currency=currency,
            custom_unit_amount=params.get("custom_unit_amount") or None,
            livemode=False,
            lookup_key=params.get("lookup_key") or None,
            metadata=_merge_metadata({}, params.get("metadata")),
            nickname=params.get("nickname") or None,
            product=product_id,
            recurring=recurring,
            tax_behavior=str(params.get("tax_behavior", "unspecified")),
            tiers_mode=None,
            transform_quantity=None,
            type="recurring" if recurring else "one_time",
            unit_amount=unit_amount,
            unit_amount_decimal=None
            if unit_amount is None
            else str(params.get("unit_amount_decimal", unit_amount)),
        )
        if price["lookup_key"]:
            self._claim_lookup_key(
                price["id"],
                price["lookup_key"],
                _bool(params.get("transfer_lookup_key", False), "transfer_lookup_key"),
            )
        self._bucket("price")[price["id"]] = price
        self._emit("price.created", price)
        if recurring:
            self._emit("plan.created", self._plan(price))
        return price

    def create_price(self, params: JSON) -> JSON:
        """POST /v1/prices."""
        with self.lock:
            return _snapshot(self._create_price_locked(params))

    def update_price(self, price_id: str, params: JSON) -> JSON:
        """POST /v1/prices/{id}."""
        with self.lock:
            price = self._get("price", price_id)
            before = copy.deepcopy(price)
            if "active" in params:
                price["active"] = _bool(params["active"], "active")
            if "nickname" in params:
                price["nickname"] = params["nickname"] or None
            if "metadata" in params:
                price["metadata"] = _merge_metadata(price["metadata"], params["metadata"])
            if "tax_behavior" in params:
                price["tax_behavior"] = str(params["tax_behavior"])
            if "lookup_key" in params:
                key = params["lookup_key"] or None
                if key:
                    self._claim_lookup_key(
                        price_id,
                        str(key),
                        _bool(params.get("transfer_lookup_key", False), "transfer_lookup_key"),
                    )
                price["lookup_key"] = key
            changes = _diff(before, price)
            if changes:
                self._emit("price.updated", price, changes)
                if price["recurring"]:
                    self._emit("plan.updated", self._plan(price), changes)
            return _snapshot(price)

    def delete_price(self, price_id: str) -> JSON:
        """Remove a price (the API cannot; the dashboard can) and emit ``price.deleted``."""
        with self.lock:
            price = self._get("price", price_id)
            del self._bucket("price")[price_id]
            self._emit("price.deleted", price)
            return {"id": price_id, "object": "price", "deleted": True}

    @staticmethod
    def _plan(price: JSON) -> JSON:
        """The legacy plan object Stripe derives from a recurring price."""
        recurring = price.get("recurring") or {}
        plan = template("plan")
        plan.update(
            id=price["id"],
            active=price["active"],
            amount=price["unit_amount"],
            amount_decimal=price["unit_amount_decimal"],
            billing_scheme=price["billing_scheme"],
            created=price["created"],
            currency=price["currency"],
            interval=recurring.get("interval"),
            interval_count=recurring.get("interval_count"),
            livemode=False,
            metadata=copy.deepcopy(price["metadata"]),
            meter=recurring.get("meter"),
            nickname=price["nickname"],
            product=price["product"],
            tiers_mode=None,
            transform_usage=None,
            trial_period_days=recurring.get("trial_period_days"),
            usage_type=recurring.get("usage_type", "licensed"),
        )
        return plan

    # ----------------------------------------------------------------- customers

    _CUSTOMER_FIELDS = frozenset(
        {
            "address",
            "balance",
            "description",
            "email",
            "invoice_settings",
            "metadata",
            "name",
            "phone",
            "preferred_locales",
            "shipping",
            "tax_exempt",
        }
    )

    def _apply_customer_fields(self, customer: JSON, params: JSON) -> None:
        for key in self._CUSTOMER_FIELDS:
            if key not in params:
                continue
            value = params[key]
            if key == "metadata":
                customer["metadata"] = _merge_metadata(customer["metadata"], value)
            elif key == "balance":
                customer["balance"] = _int(value, "balance")
            elif key == "preferred_locales":
                customer[key] = _str_list(value, key)
            elif key in ("address", "shipping", "invoice_settings"):
                if value == "":
                    customer[key] = None
                elif isinstance(value, dict):
                    merged = dict(customer.get(key) or {})
                    merged.update(value)
                    customer[key] = merged
            else:
                customer[key] = None if value == "" else str(value)

    def create_customer(self, params: JSON) -> JSON:
        """POST /v1/customers."""
        with self.lock:
            customer = template("customer")
            customer.update(
                id=generate_id("cus_", 14),
                created=self._created(),
                currency=None,
                discount=None,
                email=None,
                name=None,
                phone=None,
                description=None,
                metadata={},
                livemode=False,
                shipping=None,
                address=None,
                invoice_prefix=secrets.token_hex(4).upper(),
                next_invoice_sequence=1,
            )
            self._apply_customer_fields(customer, params)
            self._bucket("customer")[customer["id"]] = customer
            self._emit("customer.created", customer)
            return _snapshot(customer)

    def _live_customer(self, customer_id: str, param: str | None = "id") -> JSON:
        if customer_id in self._deleted_customers:
            raise StripeError.missing("customer", customer_id, param)
        return self._get("customer", customer_id, param)

    def update_customer(self, customer_id: str, params: JSON) -> JSON:
        """POST /v1/customers/{id}."""
        with self.lock:
            customer = self._live_customer(customer_id)
            before = copy.deepcopy(customer)
            self._apply_customer_fields(customer, params)
            changes = _diff(before, customer)
            if changes:
                self._emit("customer.updated", customer, changes)
            return _snapshot(customer)

    def delete_customer(self, customer_id: str) -> JSON:
        """DELETE /v1/customers/{id}: also cancels the customer's subscriptions."""
        with self.lock:
            customer = self._live_customer(customer_id)
            for sub in list(self._bucket("subscription").values()):
                if sub["customer"] == customer_id and sub["status"] not in (
                    "canceled",
                    "incomplete_expired",
                ):
                    self._cancel_subscription_locked(sub, reason="cancellation_requested")
            del self._bucket("customer")[customer_id]
            self._deleted_customers.add(customer_id)
            self._emit("customer.deleted", customer)
            return {"id": customer_id, "object": "customer", "deleted": True}

    # ----------------------------------------------------------------- subscriptions

    def _price_for_item(self, price_id: str, param: str) -> JSON:
        price = self._get("price", price_id, param)
        if price["type"] != "recurring":
            raise StripeError.invalid(
                "The price specified is set to `type=one_time` but this field only accepts "
                "prices with `type=recurring`.",
                param=param,
            )
        if not price["active"]:
            raise StripeError.invalid(
                "The price specified is inactive. This field only accepts active prices.",
                param=param,
            )
        return price

    def _item_period(self, sub: JSON, price: JSON, n: int) -> tuple[int, int]:
        if n < 0:
            return int(sub["trial_start"]), int(sub["trial_end"])
        recurring = price["recurring"]
        anchor = int(sub["billing_cycle_anchor"])
        interval, count = recurring["interval"], int(recurring["interval_count"])
        return (
            period_boundary(anchor, interval, count, n),
            period_boundary(anchor, interval, count, n + 1),
        )

    def _refresh_item(self, sub: JSON, item: JSON) -> None:
        price: JSON = self._bucket("price").get(item["price"]["id"]) or item["price"]
        item["price"] = _snapshot(price)
        item["plan"] = self._plan(price)
        start, end = self._item_period(sub, price, self._period_no[item["id"]])
        item["current_period_start"], item["current_period_end"] = start, end

    def _new_item(self, sub: JSON, price: JSON, quantity: int, metadata: Any, n: int) -> JSON:
        item = template("subscription_item")
        item.update(
            id=generate_id("si_", 14),
            billing_thresholds=None,
            created=self._created(),
            discounts=[],
            metadata=_merge_metadata({}, metadata),
            price=_snapshot(price),
            quantity=quantity,
            subscription=sub["id"],
            tax_rates=[],
        )
        self._item_index[item["id"]] = sub["id"]
        self._period_no[item["id"]] = n
        self._refresh_item(sub, item)
        return item

    def _current_period_number(self, sub: JSON) -> int:
        numbers = [self._period_no[item["id"]] for item in sub["items"]["data"]]
        return min(numbers) if numbers else 0

    def _period_end(self, sub: JSON) -> int:
        return min(int(item["current_period_end"]) for item in sub["items"]["data"])

    def _create_invoice_locked(self, sub: JSON, billing_reason: str, paid: bool = True) -> JSON:
        customer = self._bucket("customer").get(sub["customer"], {})
        invoice = template("invoice")
        line_template = invoice["lines"]["data"][0]
        invoice_id = generate_id("in_")
        lines = []
        trialing = sub["status"] == "trialing"
        for item in sub["items"]["data"]:
            unit = 0 if trialing else int(item["price"]["unit_amount"] or 0)
            amount = unit * int(item["quantity"] or 1)
            line = copy.deepcopy(line_template)
            line.update(
                id=generate_id("il_"),
                amount=amount,
                currency=item["price"]["currency"],
                description=(
                    f"Trial period for {self._product_name(item['price']['product'])}"
                    if trialing
                    else f"{item['quantity']} x {self._product_name(item['price']['product'])}"
                ),
                discount_amounts=[],
                discounts=[],
                invoice=invoice_id,
                metadata=copy.deepcopy(sub["metadata"]),
                parent={
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": sub["id"],
                        "subscription_item": item["id"],
                    },
                    "type": "subscription_item_details",
                },
                period={"start": item["current_period_start"], "end": item["current_period_end"]},
                pretax_credit_amounts=[],
                pricing={
                    "price_details": {
                        "price": item["price"]["id"],
                        "product": item["price"]["product"],
                    },
                    "type": "price_details",
                    "unit_amount_decimal": str(unit),
                },
                quantity=item["quantity"],
                subscription=sub["id"],
                subtotal=amount,
                taxes=[],
            )
            lines.append(line)
        total = sum(line["amount"] for line in lines)
        now = self.now()
        first = sub["items"]["data"][0] if sub["items"]["data"] else None
        invoice.update(
            id=invoice_id,
            account_name="Kernia Fake Stripe",
            amount_due=total,
            amount_overpaid=0,
            amount_paid=total if paid else 0,
            amount_remaining=0 if paid else total,
            attempt_count=1,
            attempted=True,
            auto_advance=not paid,
            billing_reason=billing_reason,
            created=now,
            currency=sub["currency"],
            customer=sub["customer"],
            customer_address=customer.get("address"),
            customer_email=customer.get("email"),
            customer_name=customer.get("name"),
            customer_phone=customer.get("phone"),
            customer_shipping=customer.get("shipping"),
            due_date=None,
            effective_at=now,
            ending_balance=0,
            from_invoice=None,
            hosted_invoice_url=f"{self.base_url}/invoice/{invoice_id}",
            invoice_pdf=None,
            last_finalization_error=None,
            lines={
                "object": "list",
                "data": lines,
                "has_more": False,
                "url": f"/v1/invoices/{invoice_id}/lines",
            },
            livemode=False,
            metadata={},
            next_payment_attempt=None if paid else now + 3 * 86400,
            number="{}-{:04d}".format(
                customer.get("invoice_prefix", "FAKE"), customer.get("next_invoice_sequence", 1)
            ),
            parent={
                "quote_details": None,
                "subscription_details": {
                    "metadata": copy.deepcopy(sub["metadata"]),
                    "subscription": sub["id"],
                },
                "type": "subscription_details",
            },
            period_end=first["current_period_end"] if first else now,
            period_start=first["current_period_start"] if first else now,
            shipping_cost=None,
            shipping_details=None,
            status="paid" if paid else "open",
            status_transitions={
                "finalized_at": now,
                "marked_uncollectible_at": None,
                "paid_at": now if paid else None,
                "voided_at": None,
            },
            subscription=sub["id"],
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            total_pretax_credit_amounts=[],
            total_taxes=[],
            webhooks_delivered_at=None,
        )
        if customer:
            customer["next_invoice_sequence"] = int(customer.get("next_invoice_sequence") or 1) + 1
        self._bucket("invoice")[invoice_id] = invoice
        sub["latest_invoice"] = invoice_id
        self._emit("invoice.created", invoice)
        self._emit("invoice.paid" if paid else "invoice.payment_failed", invoice)
        return invoice

    def _product_name(self, product_id: str) -> str:
        product = self._bucket("product").get(product_id)
        return str(product["name"]) if product else product_id

    def create_subscription(self, params: JSON) -> JSON:
        """POST /v1/subscriptions."""
        with self.lock:
            sub = self._create_subscription_locked(params)
            return _snapshot(sub)

    def _create_subscription_locked(self, params: JSON) -> JSON:
        customer_id = str(_require(params, "customer"))
        self._live_customer(customer_id, "customer")
        raw_items = params.get("items")
        if not raw_items:
            raise StripeError.required("items")
        if not isinstance(raw_items, list):
            raise StripeError.invalid(
                "Invalid array", param="items", code="parameter_invalid_array"
            )
        prices = []
        for index, raw in enumerate(raw_items):
            price_id = raw.get("price") if isinstance(raw, dict) else None
            if not price_id:
                raise StripeError.required(f"items[{index}][price]")
            quantity = _int(raw.get("quantity", 1), f"items[{index}][quantity]")
            prices.append(
                (
                    self._price_for_item(str(price_id), f"items[{index}][price]"),
                    quantity,
                    raw.get("metadata"),
                )
            )
        now = self.now()
        trial_end: int | None = None
        if params.get("trial_end") not in (None, ""):
            trial_end = (
                now if params["trial_end"] == "now" else _int(params["trial_end"], "trial_end")
            )
            if trial_end != now and trial_end <= now:
                raise StripeError.invalid(
                    "Invalid timestamp: must be in the future", param="trial_end"
                )
        elif params.get("trial_period_days") not in (None, ""):
            days = _int(params["trial_period_days"], "trial_period_days")
            if days > 0:
                trial_end = now + days * 86400
        elif _bool(params.get("trial_from_plan", False), "trial_from_plan"):
            days = prices[0][0]["recurring"].get("trial_period_days")
            if days:
                trial_end = now + int(days) * 86400
        trialing = trial_end is not None and trial_end > now
        anchor = trial_end if trialing else now
        if params.get("billing_cycle_anchor") not in (None, "") and not trialing:
            anchor = _int(params["billing_cycle_anchor"], "billing_cycle_anchor")
        sub = template("subscription")
        sub_id = generate_id("sub_")
        sub.update(
            id=sub_id,
            automatic_tax={"disabled_reason": None, "enabled": False, "liability": None},
            billing_cycle_anchor=anchor,
            billing_cycle_anchor_config=None,
            billing_mode={"flexible": None, "type": "classic", "updated_at": None},
            billing_schedules=[],
            billing_thresholds=None,
            cancel_at=None,
            cancel_at_period_end=False,
            canceled_at=None,
            cancellation_details={"comment": None, "feedback": None, "reason": None},
            collection_method=str(params.get("collection_method", "charge_automatically")),
            created=now,
            currency=prices[0][0]["currency"],
            customer=customer_id,
            default_payment_method=params.get("default_payment_method") or None,
            description=params.get("description") or None,
            ended_at=None,
            latest_invoice=None,
            livemode=False,
            managed_payments=None,
            metadata=_merge_metadata({}, params.get("metadata")),
            next_pending_invoice_item_invoice=None,
            pause_collection=None,
            payment_settings={
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            pending_invoice_item_interval=None,
            pending_update=None,
            start_date=now,
            status="trialing" if trialing else "active",
            transfer_data=None,
            trial_end=trial_end,
            trial_start=now if trial_end is not None else None,
        )
        sub["items"] = {
            "object": "list",
            "data": [],
            "has_more": False,
            "total_count": 0,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        }
        for price, quantity, metadata in prices:
            sub["items"]["data"].append(
                self._new_item(sub, price, quantity, metadata, -1 if trialing else 0)
            )
        sub["items"]["total_count"] = len(sub["items"]["data"])
        if "cancel_at_period_end" in params and _bool(
            params["cancel_at_period_end"], "cancel_at_period_end"
        ):
            self._schedule_cancel(sub)
        self._bucket("subscription")[sub_id] = sub
        self._emit("customer.subscription.created", sub)
        self._create_invoice_locked(sub, "subscription_create")
        return sub

    def _schedule_cancel(self, sub: JSON) -> None:
        sub["cancel_at_period_end"] = True
        sub["cancel_at"] = self._period_end(sub)
        sub["canceled_at"] = self.now()
        sub["cancellation_details"] = {
            "comment": None,
            "feedback": None,
            "reason": "cancellation_requested",
        }

    def _unschedule_cancel(self, sub: JSON) -> None:
        sub["cancel_at_period_end"] = False
        sub["cancel_at"] = None
        sub["canceled_at"] = None
        sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": None}

    def _live_subscription(self, sub_id: str) -> JSON:
        sub = self._get("subscription", sub_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise StripeError.invalid(
                "A canceled subscription can only update its cancellation_details and metadata.",
                param=None,
            )
        return sub

    def update_subscription(self, sub_id: str, params: JSON) -> JSON:
        """POST /v1/subscriptions/{id}."""
        with self.lock:
            sub = self._get("subscription", sub_id)
            before = copy.deepcopy(sub)
            ended = sub["status"] in ("canceled", "incomplete_expired")
            if ended and set(params) - {"metadata", "cancellation_details", "expand"}:
                raise StripeError.invalid(
                    "A canceled subscription can only update its cancellation_details and metadata."
                )
            if "metadata" in params:
                sub["metadata"] = _merge_metadata(sub["metadata"], params["metadata"])
            if "description" in params:
                sub["description"] = params["description"] or None
            if "default_payment_method" in params:
                sub["default_payment_method"] = params["default_payment_method"] or None
            if isinstance(params.get("cancellation_details"), dict):
                sub["cancellation_details"].update(params["cancellation_details"])
            if params.get("items"):
                self._update_items(sub, params["items"])
            if "cancel_at_period_end" in params:
                if _bool(params["cancel_at_period_end"], "cancel_at_period_end"):
                    self._schedule_cancel(sub)
                else:
                    self._unschedule_cancel(sub)
            if "cancel_at" in params:
                if params["cancel_at"] in ("", None):
                    self._unschedule_cancel(sub)
                else:
                    sub["cancel_at"] = _int(params["cancel_at"], "cancel_at")
                    sub["canceled_at"] = self.now()
            if "pause_collection" in params:
                value = params["pause_collection"]
                if value in ("", None):
                    sub["pause_collection"] = None
                elif isinstance(value, dict):
                    behavior = _require(value, "behavior") if value.get("behavior") else None
                    if behavior is None:
                        raise StripeError.required("pause_collection[behavior]")
                    resumes = value.get("resumes_at")
                    sub["pause_collection"] = {
                        "behavior": str(behavior),
                        "resumes_at": _int(resumes, "pause_collection[resumes_at]")
                        if resumes
                        else None,
                    }
            if "trial_end" in params and params["trial_end"] not in (None, ""):
                if params["trial_end"] == "now":
                    if sub["status"] == "trialing":
                        self._end_trial(sub, self.now())
                else:
                    new_end = _int(params["trial_end"], "trial_end")
                    if sub["status"] == "trialing":
                        sub["trial_end"] = new_end
                        sub["billing_cycle_anchor"] = new_end
                        for item in sub["items"]["data"]:
                            self._refresh_item(sub, item)
            changes = _diff(before, sub)
            if changes:
                self._emit("customer.subscription.updated", sub, changes)
            if changes.get("status") == "trialing" and sub["status"] == "active":
                self._create_invoice_locked(sub, "subscription_update")
            return _snapshot(sub)

    def _end_trial(self, sub: JSON, at: int) -> None:
        sub["trial_end"] = at
        sub["billing_cycle_anchor"] = at
        sub["status"] = "active"
        for item in sub["items"]["data"]:
            self._period_no[item["id"]] = 0
            self._refresh_item(sub, item)

    def _update_items(self, sub: JSON, raw_items: Any) -> None:
        if not isinstance(raw_items, list):
            raise StripeError.invalid(
                "Invalid array", param="items", code="parameter_invalid_array"
            )
        data: list[JSON] = sub["items"]["data"]
        for index, raw in enumerate(raw_items):
            if not isinstance(raw, dict):
                raise StripeError.invalid("Invalid hash", param=f"items[{index}]")
            item_id = raw.get("id")
            if item_id:
                item = next((i for i in data if i["id"] == item_id), None)
                if item is None:
                    raise StripeError.missing(
                        "subscription item", str(item_id), f"items[{index}][id]"
                    )
                if raw.get("deleted") not in (None, "") and _bool(
                    raw["deleted"], f"items[{index}][deleted]"
                ):
                    data.remove(item)
                    self._item_index.pop(item["id"], None)
                    continue
                if raw.get("price"):
                    price = self._price_for_item(str(raw["price"]), f"items[{index}][price]")
                    item["price"] = _snapshot(price)
                if raw.get("quantity") not in (None, ""):
                    item["quantity"] = _int(raw["quantity"], f"items[{index}][quantity]")
                if "metadata" in raw:
                    item["metadata"] = _merge_metadata(item["metadata"], raw["metadata"])
                self._refresh_item(sub, item)
            else:
                if not raw.get("price"):
                    raise StripeError.required(f"items[{index}][price]")
                price = self._price_for_item(str(raw["price"]), f"items[{index}][price]")
                quantity = _int(raw.get("quantity", 1), f"items[{index}][quantity]")
                data.append(
                    self._new_item(
                        sub, price, quantity, raw.get("metadata"), self._current_period_number(sub)
                    )
                )
        if not data:
            raise StripeError.invalid(
                "A subscription must have at least one active item.", param="items"
            )
        sub["items"]["total_count"] = len(data)

    def _cancel_subscription_locked(
        self, sub: JSON, reason: str = "cancellation_requested"
    ) -> JSON:
        before = copy.deepcopy(sub)
        now = self.now()
        sub["status"] = "canceled"
        sub["ended_at"] = now
        sub["canceled_at"] = sub["canceled_at"] or now
        sub["cancel_at"] = sub["cancel_at"] if sub["cancel_at_period_end"] else None
        sub["cancellation_details"] = {**(sub["cancellation_details"] or {}), "reason": reason}
        self._emit("customer.subscription.deleted", sub, _diff(before, sub))
        return sub

    def cancel_subscription(self, sub_id: str, params: JSON | None = None) -> JSON:
        """DELETE /v1/subscriptions/{id}: cancel now."""
        params = params or {}
        with self.lock:
            sub = self._get("subscription", sub_id)
            if sub["status"] == "canceled":
                raise StripeError.invalid(
                    f"This subscription has already been canceled: {sub_id}",
                    param=None,
                    code="resource_missing",
                )
            if isinstance(params.get("cancellation_details"), dict):
                sub["cancellation_details"] = {
                    **(sub["cancellation_details"] or {}),
                    **params["cancellation_details"],
                }
            return _snapshot(self._cancel_subscription_locked(sub))

    def list_subscriptions(self, params: JSON) -> list[JSON]:
        """GET /v1/subscriptions filters: customer, price, status (incl. ``all``/``ended``)."""
        status = params.get("status")
        if status is not None and status not in SUBSCRIPTION_STATUSES | {"all", "ended"}:
            raise StripeError.invalid(f"Invalid status: {status}", param="status")
        customer, price = params.get("customer"), params.get("price")

        def keep(sub: JSON) -> bool:
            if customer and sub["customer"] != customer:
                return False
            if price and all(i["price"]["id"] != price for i in sub["items"]["data"]):
                return False
            if status == "all":
                return True
            if status == "ended":
                return sub["status"] in ("canceled", "incomplete_expired")
            if status:
                return bool(sub["status"] == status)
            return sub["status"] not in ("canceled", "incomplete_expired")

        return self.list_objects("subscription", keep)

    def retrieve_subscription_item(self, item_id: str) -> JSON:
        """GET /v1/subscription_items/{id}."""
        with self.lock:
            sub_id = self._item_index.get(item_id)
            sub = self._bucket("subscription").get(sub_id or "")
            for item in (sub or {}).get("items", {}).get("data", []):
                if item["id"] == item_id:
                    return _snapshot(item)
            raise StripeError.missing("subscription item", item_id)

    def list_subscription_items(self, sub_id: str) -> list[JSON]:
        """GET /v1/subscription_items?subscription=..."""
        with self.lock:
            sub = self._get("subscription", sub_id, "subscription")
            return _snapshot(sub["items"]["data"])

    # ------------------------------------------------------------- lifecycle helpers

    def advance_subscription(self, sub_id: str) -> JSON:
        """Move a subscription into its next billing period, like time passing on Stripe.

        The clock jumps to the current period end. A subscription set to cancel
        at period end is canceled instead; a trial ends and the subscription
        becomes active. Otherwise every item moves one period on and a paid
        invoice is created.
        """
        with self.lock:
            sub = self._live_subscription(sub_id)
            period_end = self._period_end(sub)
            if self.now() < period_end:
                self.set_clock(period_end)
            if sub["cancel_at_period_end"]:
                self._cancel_subscription_locked(sub)
                return _snapshot(sub)
            before = copy.deepcopy(sub)
            if sub["status"] == "trialing":
                sub["status"] = "active"
                for item in sub["items"]["data"]:
                    self._period_no[item["id"]] = 0
                    self._refresh_item(sub, item)
                reason = "subscription_cycle"
            else:
                for item in sub["items"]["data"]:
                    if int(item["current_period_end"]) <= period_end:
                        self._period_no[item["id"]] += 1
                    self._refresh_item(sub, item)
                reason = "subscription_cycle"
            self._create_invoice_locked(sub, reason)
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
            return _snapshot(sub)

    def fail_payment(self, sub_id: str) -> JSON:
        """The subscription's renewal payment fails: open invoice, status ``past_due``."""
        with self.lock:
            sub = self._live_subscription(sub_id)
            before = copy.deepcopy(sub)
            self._create_invoice_locked(sub, "subscription_cycle", paid=False)
            sub["status"] = "past_due"
            self._emit("customer.subscription.updated", sub, _diff(before, sub))
            return _snapshot(sub)

    def set_subscription_status(self, sub_id: str, status: str) -> JSON:
        """Force a status, emitting the event Stripe would (paused/resumed/updated/deleted)."""
        if status not in SUBSCRIPTION_STATUSES:
            raise ValueError(f"unknown subscription status {status!r}")
        with self.lock:
            sub = self._get("subscription", sub_id)
            if status == "canceled":
                return _snapshot(self._cancel_subscription_locked(sub))
            before = copy.deepcopy(sub)
            if before["status"] == status:
                return _snapshot(sub)
            sub["status"] = status
            changes = _diff(before, sub)
            if status == "paused":
                self._emit("customer.subscription.paused", sub, changes)
            elif before["status"] == "paused":
                self._emit("customer.subscription.resumed", sub, changes)
            else:
                self._emit("customer.subscription.updated", sub, changes)
            return _snapshot(sub)

    # ----------------------------------------------------------------- invoices

    def list_invoices(self, params: JSON) -> list[JSON]:
        """GET /v1/invoices filters: customer, subscription, status."""

        def keep(invoice: JSON) -> bool:
            return all(
                not params.get(key) or invoice.get(key) == params[key]
                for key in ("customer", "subscription", "status")
            )

        return self.list_objects("invoice", keep)

    def search_customers(self, query: str) -> list[JSON]:
        """GET /v1/customers/search: Stripe's search query language, for customer fields.

        Supports ``field:'value'`` (exact), ``field~'value'`` (substring), a
        leading ``-`` (negation), ``metadata['key']`` and clauses joined by
        ``AND`` or ``OR`` (not both), on ``email``, ``name``, ``phone``,
        ``description`` and ``metadata``.
        """
        clauses, joiner = _parse_search(query)

        def matches(customer: JSON) -> bool:
            results = []
            for negate, field, op, value in clauses:
                if field.startswith("metadata["):
                    actual = customer["metadata"].get(field[len("metadata['") : -2])
                else:
                    actual = customer.get(field)
                text = "" if actual is None else str(actual)
                hit = value.lower() in text.lower() if op == "~" else text.lower() == value.lower()
                results.append(hit != negate)
            return any(results) if joiner == "OR" else all(results)

        return self.list_objects("customer", matches)

    # ----------------------------------------------------------------- checkout

    def create_checkout_session(self, params: JSON) -> JSON:
        """POST /v1/checkout/sessions."""
        mode = str(_require(params, "mode"))
        if mode not in ("payment", "subscription", "setup"):
            raise StripeError.invalid(
                "Invalid mode: must be one of payment, setup, or subscription", param="mode"
            )
        with self.lock:
            customer_id = params.get("customer") or None
            if customer_id:
                self._live_customer(str(customer_id), "customer")
            if customer_id and params.get("customer_email"):
                raise StripeError.invalid(
                    "You may only specify one of these parameters: customer, customer_email.",
                    param="customer_email",
                )
            raw_items = params.get("line_items") or []
            if mode != "setup" and not raw_items:
                raise StripeError.required("line_items")
            if not isinstance(raw_items, list):
                raise StripeError.invalid(
                    "Invalid array", param="line_items", code="parameter_invalid_array"
                )
            session_id = generate_id("cs_test_", 58)
            line_items: list[JSON] = []
            for index, raw in enumerate(raw_items):
                if not isinstance(raw, dict) or not raw.get("price"):
                    raise StripeError.required(f"line_items[{index}][price]")
                param = f"line_items[{index}][price]"
                price = self._get("price", str(raw["price"]), param)
                if not price["active"]:
                    raise StripeError.invalid(
                        f"The price `{price['id']}` is not active.", param=param
                    )
                if mode == "payment" and price["type"] == "recurring":
                    raise StripeError.invalid(
                        "You specified `payment` mode but passed a recurring price. Either switch "
                        "to `subscription` mode or use only one-time prices.",
                        param=param,
                    )
                quantity = _int(raw.get("quantity", 1), f"line_items[{index}][quantity]")
                amount = int(price["unit_amount"] or 0) * quantity
                line = template("item")
                line.update(
                    id=generate_id("li_"),
                    adjustable_quantity=None,
                    amount_discount=0,
                    amount_subtotal=amount,
                    amount_tax=0,
                    amount_total=amount,
                    currency=price["currency"],
                    description=self._product_name(price["product"]),
                    metadata={},
                    price=_snapshot(price),
                    quantity=quantity,
                )
                line_items.append(line)
            if mode == "subscription" and not any(
                li["price"]["type"] == "recurring" for li in line_items
            ):
                raise StripeError.invalid(
                    "You must provide at least one recurring price in `subscription` mode when "
                    "using prices.",
                    param="line_items",
                )
            sub_data = params.get("subscription_data") or {}
            if sub_data and not isinstance(sub_data, dict):
                raise StripeError.invalid("Invalid hash", param="subscription_data")
            if sub_data.get("trial_period_days") not in (None, ""):
                _int(sub_data["trial_period_days"], "subscription_data[trial_period_days]")
            now = self.now()
            total = sum(li["amount_total"] for li in line_items)
            customer = self._bucket("customer").get(str(customer_id)) if customer_id else None
            email = params.get("customer_email") or (customer or {}).get("email")
            session = template("checkout.session")
            session.update(
                id=session_id,
                adaptive_pricing=None,
                after_expiration=None,
                allow_promotion_codes=(
                    _bool(params["allow_promotion_codes"], "allow_promotion_codes")
                    if "allow_promotion_codes" in params
                    else None
                ),
                amount_subtotal=total if mode != "setup" else None,
                amount_total=total if mode != "setup" else None,
                automatic_tax={
                    "enabled": False,
                    "liability": None,
                    "provider": None,
                    "status": None,
                },
                billing_address_collection=params.get("billing_address_collection"),
                cancel_url=params.get("cancel_url"),
                client_reference_id=params.get("client_reference_id") or None,
                client_secret=None,
                collected_information=None,
                consent=None,
                consent_collection=None,
                created=now,
                currency=line_items[0]["currency"] if line_items else None,
                currency_conversion=None,
                custom_fields=[],
                custom_text={
                    "after_submit": None,
                    "shipping_address": None,
                    "submit": None,
                    "terms_of_service_acceptance": None,
                },
                customer=customer_id,
                customer_account=None,
                customer_creation=None if customer_id or mode != "payment" else "if_required",
                customer_details=None,
                customer_email=params.get("customer_email") or None,
                discounts=[],
                expires_at=_int(params["expires_at"], "expires_at")
                if params.get("expires_at")
                else now + 86400,
                integration_identifier=None,
                invoice=None,
                invoice_creation=None,
                livemode=False,
                locale=params.get("locale"),
                managed_payments=None,
                metadata=_merge_metadata({}, params.get("metadata")),
                mode=mode,
                origin_context=None,
                payment_intent=None,
                payment_link=None,
                payment_method_collection="always" if mode == "subscription" else None,
                payment_method_configuration_details=None,
                payment_method_options={},
                payment_method_types=_str_list(
                    params.get("payment_method_types"), "payment_method_types"
                )
                or ["card"],
                payment_status="no_payment_required" if mode == "setup" else "unpaid",
                permissions=None,
                phone_number_collection={"enabled": False},
                recovered_from=None,
                saved_payment_method_options=None,
                setup_intent=None,
                shipping_address_collection=None,
                shipping_cost=None,
                shipping_options=[],
                status="open",
                submit_type=params.get("submit_type"),
                subscription=None,
                success_url=params.get("success_url"),
                total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
                ui_mode=str(params.get("ui_mode", "hosted")),
                url=f"{self.base_url}/checkout/{session_id}",
                wallet_options=None,
            )
            if email:
                session["customer_details"] = {
                    "address": None,
                    "business_name": None,
                    "email": email,
                    "individual_name": None,
                    "name": (customer or {}).get("name"),
                    "phone": None,
                    "tax_exempt": "none",
                    "tax_ids": [],
                }
            # Keep what completion needs, but not in the public object.
            session["_subscription_data"] = _snapshot(sub_data)
            self._bucket("checkout.session")[session_id] = session
            self._line_items[session_id] = line_items
            return self._public_session(session)

    @staticmethod
    def _public_session(session: JSON) -> JSON:
        return {k: _snapshot(v) for k, v in session.items() if not k.startswith("_")}

    def retrieve_checkout_session(self, session_id: str) -> JSON:
        """GET /v1/checkout/sessions/{id}."""
        with self.lock:
            return self._public_session(self._get("checkout.session", session_id))

    def list_checkout_sessions(self, params: JSON) -> list[JSON]:
        """GET /v1/checkout/sessions filters: customer, subscription, status."""
        with self.lock:
            return [
                self._public_session(s)
                for s in reversed(self._bucket("checkout.session").values())
                if all(
                    not params.get(k) or s.get(k) == params[k]
                    for k in ("customer", "subscription", "status")
                )
            ]

    def checkout_line_items(self, session_id: str) -> list[JSON]:
        """GET /v1/checkout/sessions/{id}/line_items (in creation order, as Stripe)."""
        with self.lock:
            self._get("checkout.session", session_id)
            return _snapshot(self._line_items.get(session_id, []))

    def expire_checkout_session(self, session_id: str) -> JSON:
        """POST /v1/checkout/sessions/{id}/expire."""
        with self.lock:
            session = self._get("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError.invalid(
                    f'Only Checkout Sessions with a status in ["open"] can be expired. This '
                    f'Checkout Session has a status of "{session["status"]}".',
                    param="session",
                )
            session["status"] = "expired"
            session["url"] = None
            public = self._public_session(session)
            self._emit("checkout.session.expired", public)
            return public

    def complete_checkout_session(self, session_id: str) -> JSON:
        """Complete a Checkout Session as if the customer paid on the hosted page.

        Creates the customer if needed, then (subscription mode) the subscription
        and its paid invoice, and emits ``customer.created``,
        ``customer.subscription.created``, ``invoice.created``, ``invoice.paid``
        and finally ``checkout.session.completed``.
        """
        with self.lock:
            session = self._get("checkout.session", session_id)
            if session["status"] != "open":
                raise StripeError.invalid(
                    f"This Checkout Session is no longer open (status: {session['status']}).",
                    param="session",
                )
            customer_id = session["customer"]
            if not customer_id:
                email = session["customer_email"] or "customer@example.com"
                customer_id = self.create_customer({"email": email})["id"]
                session["customer"] = customer_id
            customer = self._bucket("customer")[customer_id]
            session["customer_details"] = {
                "address": None,
                "business_name": None,
                "email": customer.get("email"),
                "individual_name": None,
                "name": customer.get("name"),
                "phone": None,
                "tax_exempt": "none",
                "tax_ids": [],
            }
            payment_status = "paid"
            if session["mode"] == "subscription":
                sub_data = session["_subscription_data"]
                sub_params: JSON = {
                    "customer": customer_id,
                    "items": [
                        {"price": li["price"]["id"], "quantity": li["quantity"]}
                        for li in self._line_items[session_id]
                        if li["price"]["type"] == "recurring"
                    ],
                    "metadata": sub_data.get("metadata") or {},
                }
                for key in ("trial_period_days", "trial_end", "description"):
                    if sub_data.get(key) not in (None, ""):
                        sub_params[key] = sub_data[key]
                sub = self._create_subscription_locked(sub_params)
                session["subscription"] = sub["id"]
                session["invoice"] = sub["latest_invoice"]
                if sub["status"] == "trialing":
                    payment_status = "no_payment_required"
            elif session["mode"] == "payment":
                session["payment_intent"] = generate_id("pi_")
            else:
                session["setup_intent"] = generate_id("seti_")
                payment_status = "no_payment_required"
            session["status"] = "complete"
            session["url"] = None
            session["payment_status"] = payment_status
            public = self._public_session(session)
            self._emit("checkout.session.completed", public)
            return public

    # ----------------------------------------------------------------- billing portal

    def create_portal_session(self, params: JSON) -> JSON:
        """POST /v1/billing_portal/sessions."""
        customer_id = str(_require(params, "customer"))
        with self.lock:
            self._live_customer(customer_id, "customer")
            session = template("billing_portal.session")
            session_id = generate_id("bps_")
            session.update(
                id=session_id,
                configuration=params.get("configuration") or "bpc_fakedefaultconfiguration",
                created=self.now(),
                customer=customer_id,
                customer_account=None,
                flow=None,
                livemode=False,
                locale=params.get("locale"),
                on_behalf_of=None,
                return_url=params.get("return_url"),
                url=f"{self.base_url}/portal/{session_id}",
            )
            self._bucket("billing_portal.session")[session_id] = session
            return _snapshot(session)

    # ----------------------------------------------------------------- webhook endpoints

    def create_webhook_endpoint(self, params: JSON, secret: str | None = None) -> JSON:
        """POST /v1/webhook_endpoints: the answer carries ``secret``, later reads do not."""
        url = str(_require(params, "url"))
        events = _str_list(_require(params, "enabled_events"), "enabled_events")
        with self.lock:
            endpoint = template("webhook_endpoint")
            endpoint.update(
                id=generate_id("we_"),
                api_version=params.get("api_version") or None,
                application=None,
                created=self.now(),
                description=params.get("description") or None,
                enabled_events=events,
                livemode=False,
                metadata=_merge_metadata({}, params.get("metadata")),
                status="enabled",
                url=url,
            )
            secret = secret or generate_id("whsec_", 32)
            self._webhook_secrets[endpoint["id"]] = secret
            self._bucket("webhook_endpoint")[endpoint["id"]] = endpoint
            return {**_snapshot(endpoint), "secret": secret}

    def update_webhook_endpoint(self, endpoint_id: str, params: JSON) -> JSON:
        """POST /v1/webhook_endpoints/{id}."""
        with self.lock:
            endpoint = self._get("webhook_endpoint", endpoint_id)
            if "url" in params:
                endpoint["url"] = str(_require(params, "url"))
            if "enabled_events" in params:
                endpoint["enabled_events"] = _str_list(params["enabled_events"], "enabled_events")
            if "description" in params:
                endpoint["description"] = params["description"] or None
            if "metadata" in params:
                endpoint["metadata"] = _merge_metadata(endpoint["metadata"], params["metadata"])
            if "disabled" in params:
                endpoint["status"] = (
                    "disabled" if _bool(params["disabled"], "disabled") else "enabled"
                )
            return _snapshot(endpoint)

    def delete_webhook_endpoint(self, endpoint_id: str) -> JSON:
        """DELETE /v1/webhook_endpoints/{id}."""
        with self.lock:
            self._get("webhook_endpoint", endpoint_id)
            del self._bucket("webhook_endpoint")[endpoint_id]
            self._webhook_secrets.pop(endpoint_id, None)
            return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

    def webhook_secret(self, endpoint_id: str) -> str:
        """The signing secret of an endpoint."""
        with self.lock:
            self._get("webhook_endpoint", endpoint_id)
            return self._webhook_secrets[endpoint_id]

    def endpoints_for(self, event_type: str) -> list[tuple[JSON, str]]:
        """Enabled endpoints (with secrets) subscribed to ``event_type``, oldest first."""
        with self.lock:
            return [
                (_snapshot(we), self._webhook_secrets[we["id"]])
                for we in self._bucket("webhook_endpoint").values()
                if we["status"] == "enabled"
                and ("*" in we["enabled_events"] or event_type in we["enabled_events"])
            ]

    # ----------------------------------------------------------------- events

    def list_events(self, params: JSON) -> list[JSON]:
        """GET /v1/events filters: type (``*`` wildcards), types[], created."""
        types = _str_list(params.get("types"), "types")
        single = params.get("type")
        created = params.get("created")

        def type_matches(event_type: str) -> bool:
            if single:
                pattern = "^" + re.escape(str(single)).replace(r"\*", ".*") + "$"
                if not re.match(pattern, event_type):
                    return False
            return not types or event_type in types

        return self.list_objects(
            "event",
            lambda e: (
                type_matches(e["type"])
                and (created is None or _match_created(e["created"], created))
            ),
        )
