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

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from . import pages
from .contract import ContractError, validate_params
from .forms import FormError, decode_form
from .idempotency import IdempotencyCache
from .store import DEFAULT_API_VERSION, JSON, RequestContext, Store, StripeError, generate_id
from .webhooks import (
    TEST_RETRY_SCHEDULE,
    DeliveryResult,
    WebhookDispatcher,
    encode_event,
    sign_webhook_payload,
)

__all__ = ["FakeStripe", "Fault", "RecordedRequest", "SdkConfiguration", "configure_stripe_sdk"]

_KEY_RE = re.compile(r"^(sk|rk)_(test|live)_[A-Za-z0-9]{24,}$")
_MAX_BODY = 10 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the fake answered (hosted pages are not recorded)."""

    method: str
    path: str
    query: dict[str, Any]
    body: dict[str, Any]
    status: int
    api_key: str | None
    stripe_version: str | None
    idempotency_key: str | None
    headers: dict[str, str] = field(default_factory=dict)
    #: Stripe's error ``param`` when the request broke Stripe's request contract.
    contract_violation: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """Query and body parameters together."""
        return {**self.query, **self.body}


@dataclass
class Fault:
    """An injected failure: the next ``times`` matching requests fail."""

    path_prefix: str
    method: str | None
    status: int | None
    times: int
    delay: float = 0.0
    body: JSON | None = None
    #: The failure happened while Stripe executed the request, so its answer is
    #: saved under the idempotency key and replayed (otherwise it is a failure
    #: in front of the API, e.g. a network error, and a retry runs anew).
    saved: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (
            self.times > 0
            and path.startswith(self.path_prefix)
            and (self.method is None or self.method.upper() == method)
        )


# ----------------------------------------------------------------------- helpers


#: Fields Stripe includes only when asked (``expand[]``), by object type.
_INCLUDABLE: dict[str | None, frozenset[str]] = {
    "price": frozenset({"currency_options", "tiers"}),
    "checkout.session": frozenset({"line_items"}),
    "customer": frozenset(
        {"sources", "subscriptions", "tax_ids", "cash_balance", "invoice_credit_balance"}
    ),
    "invoice": frozenset({"payments"}),
    "item": frozenset({"discounts", "taxes"}),
    None: frozenset({"breakdown"}),  # inside hashes, e.g. ``total_details.breakdown``
}
_MAX_EXPAND_DEPTH = 4


def _cannot_expand(segment: str, hint: str | None = None) -> StripeError:
    message = f"This property cannot be expanded ({segment})."
    if hint:
        message += f" You may want to try expanding '{hint}' instead."
    return StripeError(400, message, saved=False)


def _expandable(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, dict):
        return "object" in value
    if isinstance(value, list):
        return all(_expandable(item) for item in value)
    return False


def _expand_path(
    node: Any, parts: list[str], resolve: Callable[[str], JSON | None], path: str
) -> None:
    if not parts or node is None:
        return
    if isinstance(node, list):
        for element in node:
            _expand_path(element, parts, resolve, path)
        return
    if not isinstance(node, dict):
        raise _cannot_expand(parts[0])
    head, rest = parts[0], parts[1:]
    if head not in node:
        if head in _INCLUDABLE.get(node.get("object"), ()):
            return
        hint = f"data.{path}" if node.get("object") == "list" and "data" in node else None
        raise _cannot_expand(head, hint)
    value = node[head]
    if not _expandable(value) and not (rest and isinstance(value, dict)):
        # A hash (``metadata``) is not expandable, but a path may go through one.
        raise _cannot_expand(head)
    if isinstance(value, str):
        resolved = resolve(value)
        if resolved is not None:
            node[head] = value = resolved
    elif isinstance(value, list):
        node[head] = value = [
            (resolve(item) or item) if isinstance(item, str) else item for item in value
        ]
    _expand_path(value, rest, resolve, path)


def expand(obj: JSON, paths: Iterable[str], resolve: Callable[[str], JSON | None]) -> JSON:
    """Replace ids at dotted ``paths`` (``data.product``, ``items.data.price``) by objects.

    As on Stripe, a path must lead through fields that hold an id, an object or
    nothing yet (``null``), at most four levels deep; anything else is refused
    with "This property cannot be expanded".
    """
    for path in paths:
        parts = [part for part in path.split(".") if part]
        if len(parts) > _MAX_EXPAND_DEPTH:
            raise StripeError(400, "You cannot expand more than 4 levels of a property.")
        _expand_path(obj, parts, resolve, path)
    return obj


def _list_object(data: list[JSON], url: str, has_more: bool = False) -> JSON:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def paginate(items: list[JSON], params: JSON, url: str) -> JSON:
    """Stripe cursor pagination over ``items`` (already in list order)."""
    try:
        limit = int(params.get("limit", 10))
    except (TypeError, ValueError) as exc:
        raise StripeError(
            400,
            f"Invalid integer: {params.get('limit')}",
            code="parameter_invalid_integer",
            param="limit",
        ) from exc
    if not 1 <= limit <= 100:
        raise StripeError(
            400,
            "Invalid limit: must be between 1 and 100",
            code="parameter_invalid_integer",
            param="limit",
        )
    ids = [item.get("id") for item in items]
    starting_after, ending_before = params.get("starting_after"), params.get("ending_before")
    if starting_after and ending_before:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    for cursor, param in ((starting_after, "starting_after"), (ending_before, "ending_before")):
        if cursor and cursor not in ids:
            raise StripeError(
                400, f"No such object: '{cursor}'", code="resource_missing", param=param
            )
    if starting_after:
        rest = items[ids.index(starting_after) + 1 :]
        return _list_object(rest[:limit], url, len(rest) > limit)
    if ending_before:
        before = items[: ids.index(ending_before)]
        return _list_object(before[-limit:], url, len(before) > limit)
    return _list_object(items[:limit], url, len(items) > limit)


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


class SdkConfiguration:
    """Undo handle returned by :func:`configure_stripe_sdk`.

    Call it (or use it as a context manager) to restore the SDK settings that
    were in effect before.
    """

    def __init__(self, previous: dict[str, Any]) -> None:
        self._previous = previous

    def restore(self) -> None:
        """Put the previous SDK settings back."""
        import stripe
        from stripe import _stripe_client

        prev = self._previous
        stripe.api_base = prev["api_base"]
        stripe.max_network_retries = prev["max_network_retries"]
        stripe.api_key = prev["api_key"]
        stripe.api_version = prev["api_version"]
        _stripe_client.DEFAULT_API_BASE = prev["client_api_base"]  # type: ignore[attr-defined]

    __call__ = restore

    def __enter__(self) -> SdkConfiguration:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()


def configure_stripe_sdk(
    api_base: str, api_key: str | None = None, api_version: str = DEFAULT_API_VERSION
) -> SdkConfiguration:
    """Point the ``stripe`` SDK (module-level API and ``StripeClient``) at ``api_base``.

    Sets ``stripe.api_base``, turns network retries off, makes new
    ``stripe.StripeClient`` instances default to ``api_base`` too (dj-stripe's
    AccountV2 builds its own client) and optionally sets the API key and
    version. Returns a handle that restores the previous settings when called
    or used as a context manager.
    """
    import stripe
    from stripe import _stripe_client

    previous = {
        "api_base": stripe.api_base,
        "max_network_retries": stripe.max_network_retries,
        "api_key": stripe.api_key,
        "api_version": stripe.api_version,
        "client_api_base": _stripe_client.DEFAULT_API_BASE,  # type: ignore[attr-defined]
    }
    base = api_base.rstrip("/")
    stripe.api_base = base
    stripe.max_network_retries = 0
    _stripe_client.DEFAULT_API_BASE = base  # type: ignore[attr-defined]
    if api_key is not None:
        stripe.api_key = api_key
    if api_version:
        stripe.api_version = api_version
    return SdkConfiguration(previous)


# ----------------------------------------------------------------------- routing

Handler = Callable[["_Api", "re.Match[str]", JSON], tuple[int, JSON]]
_ROUTES: list[tuple[str, re.Pattern[str], Handler, str | None]] = []


def route(method: str, pattern: str, params: str | None) -> Callable[[Handler], Handler]:
    """Register an API handler for ``method`` and a path regex.

    ``params`` names the ``stripe.params`` TypedDict that is Stripe's request
    contract for the endpoint (``"PriceCreateParams"``,
    ``"checkout.SessionCreateParams"``); requests are validated against it.
    """

    def decorator(func: Handler) -> Handler:
        _ROUTES.append((method, re.compile(f"^{pattern}$"), func, params))
        return func

    return decorator


def routes() -> list[tuple[str, str, str | None]]:
    """``(method, path regex, params type name)`` of every API route."""
    return [(method, pattern.pattern, params) for method, pattern, _, params in _ROUTES]


_ID = r"([A-Za-z0-9_]+)"


class _Api:
    """The API endpoints, bound to one :class:`FakeStripe`."""

    def __init__(self, fake: FakeStripe) -> None:
        self.fake = fake
        self.store = fake.store

    def _one(self, obj: JSON, params: JSON) -> tuple[int, JSON]:
        return 200, expand(obj, _as_list(params.get("expand")), self.store.resolve)

    def _page(self, items: list[JSON], params: JSON, url: str) -> tuple[int, JSON]:
        page = paginate(items, params, url)
        return 200, expand(page, _as_list(params.get("expand")), self.store.resolve)

    # account ------------------------------------------------------------------
    @route("GET", "/v1/account", "AccountRetrieveCurrentParams")
    def account(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve_account(), p)

    @route("GET", f"/v1/accounts/{_ID}", "AccountRetrieveParams")
    def account_by_id(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        account = self.store.retrieve_account()
        if m.group(1) != account["id"]:
            raise StripeError.missing("account", m.group(1))
        return self._one(account, p)

    @route("GET", "/v2/core/accounts", None)
    def v2_accounts(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, {"data": [self._v2_account()], "next_page_url": None, "previous_page_url": None}

    @route("GET", f"/v2/core/accounts/{_ID}", None)
    def v2_account(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        account = self._v2_account()
        if m.group(1) != account["id"]:
            raise StripeError.missing("account", m.group(1))
        return 200, account

    def _v2_account(self) -> JSON:
        v1 = self.store.retrieve_account()
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(v1["created"]))
        return {
            "id": v1["id"],
            "object": "v2.core.account",
            "applied_configurations": [],
            "closed": False,
            "configuration": None,
            "contact_email": v1["email"],
            "contact_phone": None,
            "created": created,
            "dashboard": "full",
            "defaults": None,
            "display_name": v1["business_profile"]["name"],
            "future_requirements": None,
            "identity": None,
            "livemode": False,
            "metadata": {},
            "requirements": None,
        }

    # products -----------------------------------------------------------------
    @route("POST", "/v1/products", "ProductCreateParams")
    def product_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_product(_without_expand(p)), p)

    @route("GET", f"/v1/products/{_ID}", "ProductRetrieveParams")
    def product_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("product", m.group(1)), p)

    @route("POST", f"/v1/products/{_ID}", "ProductModifyParams")
    def product_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_product(m.group(1), _without_expand(p)), p)

    @route("DELETE", f"/v1/products/{_ID}", "ProductDeleteParams")
    def product_delete(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.delete_product(m.group(1))

    @route("GET", "/v1/products", "ProductListParams")
    def product_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        ids = set(_as_list(p.get("ids")))
        active = _flag(p.get("active"))
        shippable = _flag(p.get("shippable"))

        def keep(product: JSON) -> bool:
            return (
                (not ids or product["id"] in ids)
                and (active is None or product["active"] == active)
                and (shippable is None or product["shippable"] == shippable)
                and (not p.get("url") or product["url"] == p["url"])
            )

        return self._page(self.store.list_objects("product", keep), p, "/v1/products")

    @route("GET", f"/v1/products/{_ID}/features", "ProductListFeaturesParams")
    def product_features(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        features = self.store.list_product_features(m.group(1))
        return self._page(features, p, f"/v1/products/{m.group(1)}/features")

    # prices -------------------------------------------------------------------
    @route("POST", "/v1/prices", "PriceCreateParams")
    def price_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_price(_without_expand(p)), p)

    @route("GET", f"/v1/prices/{_ID}", "PriceRetrieveParams")
    def price_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("price", m.group(1)), p)

    @route("POST", f"/v1/prices/{_ID}", "PriceModifyParams")
    def price_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_price(m.group(1), _without_expand(p)), p)

    @route("GET", "/v1/prices", "PriceListParams")
    def price_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        active = _flag(p.get("active"))
        lookup_keys = set(_as_list(p.get("lookup_keys")))
        raw_recurring = p.get("recurring")
        recurring: JSON = raw_recurring if isinstance(raw_recurring, dict) else {}
        if p.get("type") not in (None, "one_time", "recurring"):
            raise StripeError.invalid(
                "Invalid type: must be one of one_time or recurring", param="type"
            )

        def keep(price: JSON) -> bool:
            rec = price.get("recurring") or {}
            return (
                (active is None or price["active"] == active)
                and (not p.get("product") or price["product"] == p["product"])
                and (not p.get("type") or price["type"] == p["type"])
                and (not p.get("currency") or price["currency"] == str(p["currency"]).lower())
                and (not lookup_keys or price["lookup_key"] in lookup_keys)
                and all(rec.get(key) == value for key, value in recurring.items())
            )

        return self._page(self.store.list_objects("price", keep), p, "/v1/prices")

    # customers ----------------------------------------------------------------
    @route("POST", "/v1/customers", "CustomerCreateParams")
    def customer_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_customer(_without_expand(p)), p)

    @route("GET", "/v1/customers/search", "CustomerSearchParams")
    def customer_search(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        items = self.store.search_customers(str(p["query"]))
        limit = int(p.get("limit", 10))
        page = {
            "object": "search_result",
            "data": items[:limit],
            "has_more": len(items) > limit,
            "next_page": None,
            "url": "/v1/customers/search",
        }
        return 200, expand(page, _as_list(p.get("expand")), self.store.resolve)

    @route("GET", f"/v1/customers/{_ID}", "CustomerRetrieveParams")
    def customer_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("customer", m.group(1)), p)

    @route("POST", f"/v1/customers/{_ID}", "CustomerModifyParams")
    def customer_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_customer(m.group(1), _without_expand(p)), p)

    @route("DELETE", f"/v1/customers/{_ID}", "CustomerDeleteParams")
    def customer_delete(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.delete_customer(m.group(1))

    @route("GET", "/v1/customers", "CustomerListParams")
    def customer_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        email = p.get("email")
        items = self.store.list_objects("customer", lambda c: not email or c["email"] == email)
        return self._page(items, p, "/v1/customers")

    # subscriptions ------------------------------------------------------------
    @route("POST", "/v1/subscriptions", "SubscriptionCreateParams")
    def subscription_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_subscription(_without_expand(p)), p)

    @route("GET", f"/v1/subscriptions/{_ID}", "SubscriptionRetrieveParams")
    def subscription_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("subscription", m.group(1)), p)

    @route("POST", f"/v1/subscriptions/{_ID}", "SubscriptionModifyParams")
    def subscription_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_subscription(m.group(1), _without_expand(p)), p)

    @route("DELETE", f"/v1/subscriptions/{_ID}", "SubscriptionCancelParams")
    def subscription_cancel(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.cancel_subscription(m.group(1), _without_expand(p)), p)

    @route("GET", "/v1/subscriptions", "SubscriptionListParams")
    def subscription_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_subscriptions(p), p, "/v1/subscriptions")

    @route("GET", "/v1/subscription_items", "SubscriptionItemListParams")
    def subscription_item_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        sub_id = p.get("subscription")
        if not sub_id:
            raise StripeError.required("subscription")
        return self._page(
            self.store.list_subscription_items(str(sub_id)), p, "/v1/subscription_items"
        )

    @route("GET", f"/v1/subscription_items/{_ID}", "SubscriptionItemRetrieveParams")
    def subscription_item_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve_subscription_item(m.group(1)), p)

    # invoices -----------------------------------------------------------------
    @route("GET", f"/v1/invoices/{_ID}", "InvoiceRetrieveParams")
    def invoice_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        invoice = self.store.retrieve("invoice", m.group(1))
        if any(path.split(".")[0] == "payments" for path in _as_list(p.get("expand"))):
            invoice["payments"] = _list_object(
                self.store.invoice_payments(invoice["id"]),
                f"/v1/invoice_payments?invoice={invoice['id']}",
            )
        return self._one(invoice, p)

    @route("GET", f"/v1/invoices/{_ID}/lines", "InvoiceListLinesParams")
    def invoice_lines(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        invoice = self.store.retrieve("invoice", m.group(1))
        return self._page(invoice["lines"]["data"], p, f"/v1/invoices/{m.group(1)}/lines")

    @route("GET", f"/v1/invoiceitems/{_ID}", "InvoiceItemRetrieveParams")
    def invoiceitem_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("invoiceitem", m.group(1)), p)

    @route("POST", f"/v1/invoices/{_ID}/pay", "InvoicePayParams")
    def invoice_pay(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.pay_invoice(m.group(1), _without_expand(p)), p)

    @route("GET", f"/v1/payment_methods/{_ID}", "PaymentMethodRetrieveParams")
    def payment_method_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("payment_method", m.group(1)), p)

    @route("GET", f"/v1/payment_intents/{_ID}", "PaymentIntentRetrieveParams")
    def payment_intent_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("payment_intent", m.group(1)), p)

    @route("GET", "/v1/invoices", "InvoiceListParams")
    def invoice_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_invoices(p), p, "/v1/invoices")

    # checkout -----------------------------------------------------------------
    def _session(self, session: JSON, p: JSON) -> tuple[int, JSON]:
        paths = _as_list(p.get("expand"))
        if any(path == "line_items" or path.startswith("line_items.") for path in paths):
            items = self.store.checkout_line_items(session["id"])
            session["line_items"] = _list_object(
                items, f"/v1/checkout/sessions/{session['id']}/line_items"
            )
        return 200, expand(session, paths, self.store.resolve)

    @route("POST", "/v1/checkout/sessions", "checkout.SessionCreateParams")
    def checkout_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._session(self.store.create_checkout_session(_without_expand(p)), p)

    @route("GET", f"/v1/checkout/sessions/{_ID}", "checkout.SessionRetrieveParams")
    def checkout_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._session(self.store.retrieve_checkout_session(m.group(1)), p)

    @route("POST", f"/v1/checkout/sessions/{_ID}/expire", "checkout.SessionExpireParams")
    def checkout_expire(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._session(self.store.expire_checkout_session(m.group(1)), p)

    @route("GET", f"/v1/checkout/sessions/{_ID}/line_items", "checkout.SessionListLineItemsParams")
    def checkout_line_items(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        items = self.store.checkout_line_items(m.group(1))
        return self._page(items, p, f"/v1/checkout/sessions/{m.group(1)}/line_items")

    @route("GET", "/v1/checkout/sessions", "checkout.SessionListParams")
    def checkout_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_checkout_sessions(p), p, "/v1/checkout/sessions")

    # billing portal -----------------------------------------------------------
    @route("POST", "/v1/billing_portal/sessions", "billing_portal.SessionCreateParams")
    def portal_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_portal_session(_without_expand(p)), p)

    # webhook endpoints --------------------------------------------------------
    @route("POST", "/v1/webhook_endpoints", "WebhookEndpointCreateParams")
    def webhook_endpoint_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_webhook_endpoint(_without_expand(p)), p)

    @route("GET", f"/v1/webhook_endpoints/{_ID}", "WebhookEndpointRetrieveParams")
    def webhook_endpoint_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("webhook_endpoint", m.group(1)), p)

    @route("POST", f"/v1/webhook_endpoints/{_ID}", "WebhookEndpointModifyParams")
    def webhook_endpoint_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_webhook_endpoint(m.group(1), _without_expand(p)), p)

    @route("DELETE", f"/v1/webhook_endpoints/{_ID}", "WebhookEndpointDeleteParams")
    def webhook_endpoint_delete(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.delete_webhook_endpoint(m.group(1))

    @route("GET", "/v1/webhook_endpoints", "WebhookEndpointListParams")
    def webhook_endpoint_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_objects("webhook_endpoint"), p, "/v1/webhook_endpoints")

    # events -------------------------------------------------------------------
    @route("GET", f"/v1/events/{_ID}", "EventRetrieveParams")
    def event_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("event", m.group(1)), p)

    @route("GET", "/v1/events", "EventListParams")
    def event_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_events(p), p, "/v1/events")


def check_contract(params_type: str, params: JSON) -> None:
    """Refuse, as Stripe would, parameters outside the endpoint's contract."""
    try:
        validate_params(params_type, params)
    except ContractError as exc:
        raise StripeError(400, exc.message, code=exc.code, param=exc.param, saved=False) from exc


def _without_expand(params: JSON) -> JSON:
    return {key: value for key, value in params.items() if key != "expand"}


def _flag(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise StripeError(400, f"Invalid boolean: {value}", code="parameter_invalid_boolean")


def _fault_payload(fault: Fault) -> JSON:
    return fault.body or {
        "error": {
            "type": "api_error",
            "message": "Injected fault: the fake Stripe failed this request.",
        }
    }


# ----------------------------------------------------------------------- HTTP


class _RequestHandler(BaseHTTPRequestHandler):
    """Translates HTTP requests into :class:`_Api` calls."""

    server_version = "FakeStripe/1.0"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # avoid 40 ms delayed-ACK stalls on keep-alive
    fake: FakeStripe  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired during an injected delay).
            self.close_connection = True

    def _send_json(self, status: int, payload: JSON, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, indent=2).encode("utf-8")
        self._send(status, body, "application/json", extra)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise StripeError(413, "Request body too large.")
        return self.rfile.read(length) if length else b""

    def _api_key(self) -> str | None:
        header = self.headers.get("Authorization") or ""
        if header.startswith("Bearer "):
            return header[len("Bearer ") :].strip() or None
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[len("Basic ") :]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
            return decoded.split(":", 1)[0] or None
        return None

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        try:
            raw_body = self._read_body()
        except StripeError as exc:
            self._send_json(exc.status, exc.to_dict())
            return
        if path.startswith("/v1/") or path.startswith("/v2/"):
            self._api(method, path, split.query, raw_body)
        else:
            self._page(method, path, raw_body)

    # ------------------------------------------------------------------ API

    def _api(self, method: str, path: str, query_string: str, raw_body: bytes) -> None:
        fake = self.fake
        request_id = generate_id("req_", 14)
        api_key = self._api_key()
        version = self.headers.get("Stripe-Version")
        idem_key = self.headers.get("Idempotency-Key")
        headers = {key: value for key, value in self.headers.items()}
        query: JSON = {}
        body: JSON = {}
        status = 500
        payload: JSON = {}
        violation: str | None = None
        extra = {"Request-Id": request_id, "Stripe-Version": version or DEFAULT_API_VERSION}
        try:
            try:
                query = decode_form(query_string)
                content_type = self.headers.get("Content-Type") or ""
                if raw_body and "json" in content_type:
                    body = json.loads(raw_body.decode("utf-8"))
                elif raw_body:
                    body = decode_form(raw_body)
            except (FormError, ValueError) as exc:
                raise StripeError(
                    400, str(exc), code="parameter_invalid", param=getattr(exc, "param", None)
                ) from exc
            fake._check_auth(api_key)
            fault = fake._take_fault(method, path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status and not fault.saved:
                    status, payload = fault.status, _fault_payload(fault)
                    return
                if not fault.status:
                    fault = None

            def call() -> tuple[int, JSON]:
                if fault is not None:
                    return int(fault.status or 500), _fault_payload(fault)
                return self._call(method, path, {**query, **body}, request_id, idem_key, version)

            if method == "POST" and idem_key:
                status, payload, replayed = fake.idempotency.run(
                    api_key, idem_key, method, path, {**query, **body}, call
                )
                if replayed:
                    extra["Idempotent-Replayed"] = "true"
            else:
                status, payload = call()
        except StripeError as exc:
            status, payload = exc.status, exc.to_dict()
            if not exc.saved and exc.type == "invalid_request_error":
                violation = exc.param or ""
        except Exception as exc:  # pragma: no cover - a bug in the fake
            status = 500
            payload = {
                "error": {"type": "api_error", "message": f"Fake Stripe internal error: {exc!r}"}
            }
        finally:
            fake._log(
                RecordedRequest(
                    method=method,
                    path=path,
                    query=query,
                    body=body,
                    status=status,
                    api_key=api_key,
                    stripe_version=version,
                    idempotency_key=idem_key,
                    headers=headers,
                    contract_violation=violation,
                )
            )
            self._send_json(status, payload, extra)

    def _call(
        self,
        method: str,
        path: str,
        params: JSON,
        request_id: str,
        idem_key: str | None,
        version: str | None,
    ) -> tuple[int, JSON]:
        api = self.fake._api
        for route_method, pattern, handler, params_type in _ROUTES:
            match = pattern.match(path)
            if not match or route_method != method:
                continue
            if params_type is not None:
                check_contract(params_type, params)
            context = RequestContext(request_id, idem_key, version)
            with self.fake.store.request_context(context):
                return handler(api, match, params)
        # Stripe answers a wrong method on a known path like an unknown path.
        raise StripeError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # ------------------------------------------------------------------ hosted pages

    def _page(self, method: str, path: str, raw_body: bytes) -> None:
        store = self.fake.store
        parts = [part for part in path.split("/") if part]
        try:
            if method == "GET" and path == "/":
                self._html(200, pages.message_page("Fake Stripe", f"API base: {self.fake.url}"))
            elif method == "GET" and len(parts) == 2 and parts[0] == "checkout":
                session = store.retrieve_checkout_session(parts[1])
                self._html(200, pages.checkout_page(session, store.checkout_line_items(parts[1])))
            elif (
                method == "POST"
                and len(parts) == 3
                and parts[0] == "checkout"
                and parts[2] == "complete"
            ):
                session = store.complete_checkout_session(parts[1])
                target = (session.get("success_url") or f"/checkout/{parts[1]}").replace(
                    "{CHECKOUT_SESSION_ID}", session["id"]
                )
                self._redirect(target)
            elif (
                method == "POST"
                and len(parts) == 3
                and parts[0] == "checkout"
                and parts[2] == "cancel"
            ):
                session = store.retrieve_checkout_session(parts[1])
                self._redirect(session.get("cancel_url") or f"/checkout/{parts[1]}")
            elif method == "GET" and len(parts) == 2 and parts[0] == "portal":
                self._portal(parts[1])
            elif (
                method == "POST"
                and len(parts) == 5
                and parts[0] == "portal"
                and parts[2] == "subscriptions"
                and parts[4] in ("cancel", "resume")
            ):
                portal = store.retrieve("billing_portal.session", parts[1])
                sub = store.retrieve("subscription", parts[3])
                if sub["customer"] != portal["customer"]:
                    raise StripeError.missing("subscription", parts[3])
                store.update_subscription(parts[3], {"cancel_at_period_end": parts[4] == "cancel"})
                self._redirect(f"/portal/{parts[1]}")
            else:
                self._html(404, pages.message_page("Not found", f"No page at {path}."))
        except StripeError as exc:
            self._html(exc.status, pages.message_page("Error", exc.message))

    def _portal(self, session_id: str) -> None:
        store = self.fake.store
        session = store.retrieve("billing_portal.session", session_id)
        customer = store.retrieve("customer", session["customer"])
        subs = store.list_subscriptions({"customer": session["customer"], "status": "all"})
        self._html(200, pages.portal_page(session, customer, subs))

    def _html(self, status: int, html: str) -> None:
        self._send(status, html.encode("utf-8"), "text/html; charset=utf-8")

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": location})


class _Server(ThreadingHTTPServer):
    # The default backlog (5) resets connections when many clients connect at once.
    request_queue_size = 128


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
        """Create products and prices from ``{"products": [{..., "prices": [...]}]}``."""
        created = []
        for product_data in data.get("products", []):
            product_params = {k: v for k, v in product_data.items() if k != "prices"}
            product = self.create_product(**product_params)
            created.append(product)
            for price_data in product_data.get("prices", []):
                created.append(self.create_price(product=product["id"], **price_data))
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
