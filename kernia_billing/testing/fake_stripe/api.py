"""The fake's API endpoints: one handler per Stripe route, each naming its contract."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .contract import ContractError, validate_params
from .listing import _as_list, _list_object, expand, paginate
from .store import JSON, StripeError

if TYPE_CHECKING:
    from .server import FakeStripe

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

    @route(
        "POST",
        f"/v1/customers/{_ID}/balance_transactions",
        "CustomerCreateBalanceTransactionParams",
    )
    def customer_balance_transaction_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        transaction = self.store.create_balance_transaction(m.group(1), _without_expand(p))
        return self._one(transaction, p)

    @route(
        "GET",
        f"/v1/customers/{_ID}/balance_transactions/{_ID}",
        "CustomerRetrieveBalanceTransactionParams",
    )
    def customer_balance_transaction_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve_balance_transaction(m.group(1), m.group(2)), p)

    @route(
        "GET",
        f"/v1/customers/{_ID}/balance_transactions",
        "CustomerListBalanceTransactionsParams",
    )
    def customer_balance_transaction_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        items = self.store.list_balance_transactions(m.group(1))
        return self._page(items, p, f"/v1/customers/{m.group(1)}/balance_transactions")

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

    @route("POST", "/v1/subscription_items", "SubscriptionItemCreateParams")
    def subscription_item_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_subscription_item(_without_expand(p)), p)

    @route("POST", f"/v1/subscription_items/{_ID}", "SubscriptionItemModifyParams")
    def subscription_item_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_subscription_item(m.group(1), _without_expand(p)), p)

    @route("DELETE", f"/v1/subscription_items/{_ID}", "SubscriptionItemDeleteParams")
    def subscription_item_delete(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.delete_subscription_item(m.group(1), _without_expand(p))

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

    @route("GET", f"/v1/charges/{_ID}", "ChargeRetrieveParams")
    def charge_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("charge", m.group(1)), p)

    @route("POST", "/v1/refunds", "RefundCreateParams")
    def refund_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_refund(_without_expand(p)), p)

    @route("GET", f"/v1/refunds/{_ID}", "RefundRetrieveParams")
    def refund_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("refund", m.group(1)), p)

    @route("GET", "/v1/invoices", "InvoiceListParams")
    def invoice_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._page(self.store.list_invoices(p), p, "/v1/invoices")

    # plan changes: previews, schedules, portal configurations -----------------
    @route("POST", "/v1/invoices/create_preview", "InvoiceCreatePreviewParams")
    def invoice_preview(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_invoice_preview(_without_expand(p)), p)

    @route("POST", "/v1/subscription_schedules", "SubscriptionScheduleCreateParams")
    def schedule_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_subscription_schedule(_without_expand(p)), p)

    @route("GET", f"/v1/subscription_schedules/{_ID}", "SubscriptionScheduleRetrieveParams")
    def schedule_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve_subscription_schedule(m.group(1)), p)

    @route("POST", f"/v1/subscription_schedules/{_ID}", "SubscriptionScheduleModifyParams")
    def schedule_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_subscription_schedule(m.group(1), _without_expand(p)), p)

    @route(
        "POST",
        f"/v1/subscription_schedules/{_ID}/release",
        "SubscriptionScheduleReleaseParams",
    )
    def schedule_release(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.release_subscription_schedule(m.group(1)), p)

    @route("POST", f"/v1/subscription_schedules/{_ID}/cancel", "SubscriptionScheduleCancelParams")
    def schedule_cancel(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.cancel_subscription_schedule(m.group(1)), p)

    @route("POST", "/v1/billing_portal/configurations", "billing_portal.ConfigurationCreateParams")
    def portal_configuration_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_portal_configuration(_without_expand(p)), p)

    @route(
        "GET",
        f"/v1/billing_portal/configurations/{_ID}",
        "billing_portal.ConfigurationRetrieveParams",
    )
    def portal_configuration_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("billing_portal.configuration", m.group(1)), p)

    @route(
        "POST",
        f"/v1/billing_portal/configurations/{_ID}",
        "billing_portal.ConfigurationModifyParams",
    )
    def portal_configuration_update(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.update_portal_configuration(m.group(1), _without_expand(p)), p)

    @route("GET", "/v1/billing_portal/configurations", "billing_portal.ConfigurationListParams")
    def portal_configuration_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        active = _flag(p.get("active"))
        configs = self.store.list_objects(
            "billing_portal.configuration",
            lambda c: active is None or c["active"] == active,
        )
        return self._page(configs, p, "/v1/billing_portal/configurations")

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

    # billing meters -------------------------------------------------------------
    @route("POST", "/v1/billing/meters", "billing.MeterCreateParams")
    def meter_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.create_meter(_without_expand(p)), p)

    @route("GET", f"/v1/billing/meters/{_ID}", "billing.MeterRetrieveParams")
    def meter_get(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.retrieve("billing.meter", m.group(1)), p)

    @route("GET", "/v1/billing/meters", "billing.MeterListParams")
    def meter_list(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        status = p.get("status")
        meters = self.store.list_objects(
            "billing.meter", lambda meter: not status or meter["status"] == status
        )
        return self._page(meters, p, "/v1/billing/meters")

    @route("POST", f"/v1/billing/meters/{_ID}/deactivate", "billing.MeterDeactivateParams")
    def meter_deactivate(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.set_meter_status(m.group(1), active=False), p)

    @route("POST", f"/v1/billing/meters/{_ID}/reactivate", "billing.MeterReactivateParams")
    def meter_reactivate(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return self._one(self.store.set_meter_status(m.group(1), active=True), p)

    @route(
        "GET",
        f"/v1/billing/meters/{_ID}/event_summaries",
        "billing.MeterListEventSummariesParams",
    )
    def meter_event_summaries(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        summaries = self.store.meter_event_summaries(m.group(1), p)
        return self._page(summaries, p, f"/v1/billing/meters/{m.group(1)}/event_summaries")

    @route("POST", "/v1/billing/meter_events", "billing.MeterEventCreateParams")
    def meter_event_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.create_meter_event(_without_expand(p))

    @route(
        "POST", "/v1/billing/meter_event_adjustments", "billing.MeterEventAdjustmentCreateParams"
    )
    def meter_event_adjustment_create(self, m: re.Match[str], p: JSON) -> tuple[int, JSON]:
        return 200, self.store.create_meter_event_adjustment(_without_expand(p))


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
