"""Checkout, return from checkout, and the customer portal.

- :func:`ensure_stripe_customer` creates the owner's Stripe customer once, even under
  concurrent calls: the billing customer row is locked (``select_for_update``) while
  Stripe is asked, and the request carries an ``Idempotency-Key`` derived from the
  billing customer, so a retry after a lost answer does not create a second one.
- :func:`start_checkout` opens a Checkout Session for a plan's approved, mapped price.
- :func:`complete_checkout` (the return from checkout) retrieves the session and
  applies its subscription at once; the webhooks that follow change nothing.
- :func:`start_portal` opens a billing portal session.

Stripe errors raise :class:`~kernia_billing.exceptions.StripeUnavailable` (502) and
leave the local rows as they were.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from django.db import transaction
from django.http.request import validate_host
from django.utils.http import url_has_allowed_host_and_scheme

from ..conf import billing_settings
from ..exceptions import (
    AlreadySubscribed,
    InvalidRequest,
    NoStripeCustomer,
    StripeRefused,
    UnknownPlan,
)
from ..models import BillingCustomer, CatalogPrice, Plan, PlanPrice, TopUpPack
from ..selectors import get_customer, offerable_prices, plan_for_prices, status_entitles
from ..types import CheckoutReturn, CheckoutStart, PortalStart
from . import stripe_gateway
from .customers import apply_subscription, get_or_create_customer
from .locking import lock_customer
from .metering.catalog import overage_line_items
from .stripe_state import (
    find_customer,
    list_customer_subscriptions,
    owner_metadata,
    pick_subscription,
    snapshot_from_stripe,
    stripe_id,
)
from .subscriptions.portal import sync_portal_configuration
from .topups.fulfil import fulfil_session
from .topups.packs import pack_quantity, sellable_pack

# --- redirects -------------------------------------------------------------------------


def allowed_redirect_hosts() -> list[str]:
    """Host patterns redirects may go to: ALLOWED_HOSTS and REDIRECT_ALLOWED_HOSTS.

    ``"*"`` never counts: it would let any host through. A project that serves every
    host lists its redirect targets in ``KERNIA_BILLING["REDIRECT_ALLOWED_HOSTS"]``.
    In DEBUG with an empty ALLOWED_HOSTS, Django's local hosts are allowed.
    """
    hosts = [*settings.ALLOWED_HOSTS, *billing_settings.REDIRECT_ALLOWED_HOSTS]
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        hosts += ["localhost", "127.0.0.1", "[::1]"]
    return [host for host in hosts if host != "*"]


def validate_redirect_url(url: str, *, field: str) -> str:
    """An absolute http(s) URL on :func:`allowed_redirect_hosts`, else 400.

    Django's ``url_has_allowed_host_and_scheme`` refuses what browsers read differently
    from ``urlsplit`` (``https://evil.com\\@allowed/``, ``https:///evil.com``, control
    characters); credentials in the URL are refused too. The host is then matched like
    ALLOWED_HOSTS (any port, ``.example.com`` subdomain patterns).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            f"{field} must be an absolute http(s) URL.", fields={field: "Not an absolute URL."}
        )
    well_formed = url_has_allowed_host_and_scheme(url, allowed_hosts={parts.netloc})
    if (
        not well_formed
        or "@" in parts.netloc
        or not validate_host(parts.hostname, allowed_redirect_hosts())
    ):
        raise InvalidRequest(
            f"{field} must point at one of this site's hosts.",
            fields={field: f"Host {parts.hostname!r} is not allowed."},
        )
    return url


# --- Stripe customer -------------------------------------------------------------------


def _api_key(api_key: str | None, customer: BillingCustomer) -> str:
    """The key for this customer's Stripe mode: the mode Stripe reported (set when we
    created the Stripe customer or applied its subscription), else the project's."""
    livemode = customer.livemode if customer.stripe_customer_id else None
    return stripe_gateway.api_key_for(
        api_key=api_key, livemode=stripe_gateway.project_livemode(livemode)
    )


def _idempotency_key(customer: BillingCustomer) -> str:
    # Stable across retries of the same creation; a new one after the Stripe customer
    # was deleted (customer.deleted moves stripe_state_at on).
    generation = int(customer.stripe_state_at.timestamp()) if customer.stripe_state_at else 0
    return f"kernia-billing-customer-{customer.pk}-{generation}"


def _owner_details(owner: Any) -> dict[str, str]:
    details = {}
    email = getattr(owner, "email", "")
    if isinstance(email, str) and email:
        details["email"] = email
    name = getattr(owner, "name", "") or (
        owner.get_full_name() if hasattr(owner, "get_full_name") else ""
    )
    if isinstance(name, str) and name:
        details["name"] = name
    return details


def ensure_stripe_customer(owner: Any, *, api_key: str | None = None) -> BillingCustomer:
    """The owner's billing customer, linked to a Stripe customer (created on first use)."""
    customer = get_or_create_customer(owner)
    if customer.stripe_customer_id:
        return customer
    with transaction.atomic():
        locked = lock_customer(customer.pk)
        if not locked.stripe_customer_id:
            real_owner = owner if not isinstance(owner, BillingCustomer) else locked.owner
            # The new Stripe customer lives in the project's current mode.
            livemode = stripe_gateway.project_livemode()
            remote = stripe_gateway.create(
                "customer",
                api_key=api_key,
                livemode=livemode,
                idempotency_key=_idempotency_key(locked),
                metadata=owner_metadata(locked),
                **_owner_details(real_owner),
            )
            locked.stripe_customer_id = str(remote["id"])
            locked.livemode = livemode
            locked.save(update_fields=["stripe_customer_id", "livemode", "updated_at"])
    customer.refresh_from_db()
    return customer


# --- checkout --------------------------------------------------------------------------


def resolve_checkout_price(
    *, plan: str | None = None, interval: str | None = None, price: str | None = None
) -> CatalogPrice:
    """The approved, active, mapped price to sell: named directly or by plan (+ interval)."""
    if bool(plan) == bool(price):
        raise InvalidRequest(
            "Name either a plan or a price.", fields={"plan": "Name a plan or a price."}
        )
    if price:
        row = offerable_prices().filter(stripe_id=price).first()
        if row is None:
            raise InvalidRequest(
                "This price cannot be bought: it is unknown, not approved, archived, not "
                "recurring, or not mapped to an active plan.",
                fields={"price": price},
            )
        return row
    plan_row = Plan.objects.filter(key=plan, active=True).first()
    if plan_row is None:
        raise UnknownPlan(f"No such plan: {plan!r}.", fields={"plan": plan})
    candidates = offerable_prices().filter(plan_mapping__plan=plan_row)
    if interval:
        candidates = candidates.filter(recurring_interval=interval)
    # Monthly first when no interval is named, then the cheapest.
    ordered = candidates.order_by("recurring_interval_count", "unit_amount", "stripe_id")
    row = None if interval else ordered.filter(recurring_interval="month").first()
    row = row or ordered.first()
    if row is None:
        where = f" billed per {interval}" if interval else ""
        raise InvalidRequest(
            f"Plan {plan!r} has no price{where} that can be bought.",
            fields={"interval" if interval else "plan": "No approved, active price."},
        )
    return row


def _is_seat_plan(plan: Plan) -> bool:
    return plan.plan_features.filter(included_from_quantity=True).exists()


def start_checkout(
    owner: Any,
    *,
    success_url: str,
    cancel_url: str,
    plan: str | None = None,
    interval: str | None = None,
    price: str | None = None,
    quantity: int | None = None,
    api_key: str | None = None,
) -> CheckoutStart:
    """Open a Stripe Checkout Session (mode subscription) for a plan's price.

    ``success_url`` is where Stripe sends the customer back (it gets
    ``session_id={CHECKOUT_SESSION_ID}`` appended); point it at the checkout return
    endpoint so the new plan is applied before the webhook arrives. Seat plans buy
    ``quantity`` (default: the current seat quantity, else 1); other plans one.
    """
    pack = sellable_pack(price) if price and not plan else None
    if pack is not None:  # top-ups: a one-time price opens Checkout in mode=payment
        return _start_topup_checkout(
            owner, pack, quantity, success_url=success_url, cancel_url=cancel_url, api_key=api_key
        )
    price_row = resolve_checkout_price(plan=plan, interval=interval, price=price)
    plan_row = PlanPrice.objects.select_related("plan").get(price=price_row).plan
    seat_plan = _is_seat_plan(plan_row)
    if not seat_plan and quantity not in (None, 1):
        raise InvalidRequest(
            "Only seat plans take a quantity.", fields={"quantity": "Not a seat plan."}
        )
    current = get_customer(owner)
    if current is not None and current.stripe_customer_id:
        _refuse_second_subscription(current, api_key=api_key)
    customer = ensure_stripe_customer(owner, api_key=api_key)
    quantity = (quantity or customer.seat_quantity or 1) if seat_plan else 1
    metadata = owner_metadata(customer)
    session = stripe_gateway.create(
        "checkout.session",
        api_key=_api_key(api_key, customer),
        mode="subscription",
        customer=customer.stripe_customer_id,
        client_reference_id=str(customer.pk),
        line_items=[
            {"price": price_row.stripe_id, "quantity": quantity},
            *overage_line_items(plan_row, price_row),  # metering: metered overage prices
        ],
        success_url=_with_session_placeholder(success_url),
        cancel_url=cancel_url,
        metadata=metadata,
        subscription_data=_subscription_data(plan_row, metadata),
        **_trial_collection(plan_row),
    )
    return CheckoutStart(
        url=str(session["url"]),
        session_id=str(session["id"]),
        stripe_customer_id=str(customer.stripe_customer_id),
        price_id=price_row.stripe_id,
        quantity=quantity,
    )


def _subscription_data(plan: Plan, metadata: dict[str, str]) -> dict[str, Any]:
    """The plan's trial (``trialDays``), and what Stripe does when it ends without a
    payment method (``TRIAL_END_WITHOUT_PAYMENT_METHOD``: cancel or pause)."""
    data: dict[str, Any] = {"metadata": metadata}
    if plan.trial_days:
        data["trial_period_days"] = plan.trial_days
        behavior = billing_settings.TRIAL_END_WITHOUT_PAYMENT_METHOD
        if behavior:
            data["trial_settings"] = {"end_behavior": {"missing_payment_method": behavior}}
    return data


def _trial_collection(plan: Plan) -> dict[str, Any]:
    # A trial that may end without a payment method lets checkout skip collecting one.
    if plan.trial_days and billing_settings.TRIAL_END_WITHOUT_PAYMENT_METHOD:
        return {"payment_method_collection": "if_required"}
    return {}


def _start_topup_checkout(
    owner: Any,
    pack: TopUpPack,
    quantity: int | None,
    *,
    success_url: str,
    cancel_url: str,
    api_key: str | None,
) -> CheckoutStart:
    """Checkout in ``mode=payment`` for a top-up pack (needs no subscription)."""
    count = pack_quantity(quantity)
    customer = ensure_stripe_customer(owner, api_key=api_key)
    metadata = {**owner_metadata(customer), "kernia_topup_pack": pack.key}
    assert pack.price is not None  # sellable_pack() only finds mapped packs
    session = stripe_gateway.create(
        "checkout.session",
        api_key=_api_key(api_key, customer),
        mode="payment",
        customer=customer.stripe_customer_id,
        client_reference_id=str(customer.pk),
        line_items=[{"price": pack.price.stripe_id, "quantity": count}],
        success_url=_with_session_placeholder(success_url),
        cancel_url=cancel_url,
        metadata=metadata,
        payment_intent_data={"metadata": metadata},
    )
    return CheckoutStart(
        url=str(session["url"]),
        session_id=str(session["id"]),
        stripe_customer_id=str(customer.stripe_customer_id),
        price_id=pack.price.stripe_id,
        quantity=count,
    )


def _refuse_second_subscription(customer: BillingCustomer, *, api_key: str | None) -> None:
    """Plan changes go through the portal: checkout would open a second subscription.

    Stripe is asked rather than our row, which lags until the return or the webhook.
    """
    subscriptions = list_customer_subscriptions(
        str(customer.stripe_customer_id), api_key=_api_key(api_key, customer)
    )
    for data in subscriptions:
        snapshot = snapshot_from_stripe(data)
        plan = plan_for_prices(snapshot.price_ids)
        if plan is not None and status_entitles(snapshot.status):
            raise AlreadySubscribed(
                f"This customer already has a {plan.name} subscription; change plans in the "
                "billing portal instead of starting a new checkout.",
                fields={"subscription": snapshot.id},
            )


def _with_session_placeholder(url: str) -> str:
    if "{CHECKOUT_SESSION_ID}" in url:
        return url
    separator = "&" if urlsplit(url).query else "?"
    # Stripe replaces the literal placeholder; it must not be percent-encoded.
    return f"{url}{separator}session_id={{CHECKOUT_SESSION_ID}}"


def return_url(base: str, *, next_url: str | None) -> str:
    """The success URL to give Stripe: the return endpoint, remembering ``next``."""
    query = urlencode({"next": next_url}) if next_url else ""
    separator = "&" if urlsplit(base).query else "?"
    return f"{base}{separator}{query}" if query else base


def complete_checkout(
    session_id: str, *, owner: Any | None = None, api_key: str | None = None
) -> CheckoutReturn:
    """Apply the subscription a completed Checkout Session created, right away.

    ``owner`` (when given) must be the session's customer: a session id is not a
    credential. The state is applied without moving ``stripe_state_at``, so the
    webhooks for the same subscription, re-reading the same state, change nothing.
    """
    try:
        session = stripe_gateway.retrieve(
            "checkout.session", session_id, api_key=api_key, expand=["subscription"]
        )
    except StripeRefused as exc:
        if exc.not_found:
            raise InvalidRequest(
                "No such checkout session.", fields={"sessionId": session_id}
            ) from exc
        raise
    stripe_customer_id = stripe_id(session.get("customer"))
    customer = find_customer(stripe_customer_id, metadata=session.get("metadata"), api_key=api_key)
    expected = get_customer(owner) if owner is not None else None
    if customer is None or (owner is not None and (expected is None or expected.pk != customer.pk)):
        raise InvalidRequest(
            "This checkout session does not belong to you.", fields={"sessionId": session_id}
        )
    subscription_id = stripe_id(session.get("subscription"))
    if session.get("status") == "complete" and subscription_id:
        listed = list_customer_subscriptions(stripe_customer_id, api_key=api_key)
        subscriptions = {s["id"]: s for s in listed}
        expanded = session.get("subscription")
        if isinstance(expanded, dict):
            subscriptions[subscription_id] = expanded
        apply_subscription(customer, pick_subscription(subscriptions.values()), state_at=None)
    if session.get("mode") == "payment":  # top-ups: the same grant as the webhook's
        fulfil_session(session, customer, api_key=api_key)
    customer.refresh_from_db()
    return CheckoutReturn(
        customer_id=customer.pk,
        session_id=session_id,
        status=str(session.get("status") or ""),
        subscription_id=subscription_id,
        plan=customer.plan.key if customer.plan else None,
    )


# --- portal ----------------------------------------------------------------------------


def start_portal(owner: Any, *, return_url: str, api_key: str | None = None) -> PortalStart:
    """A billing portal session for the owner's Stripe customer."""
    customer = get_customer(owner)
    if customer is None or not customer.stripe_customer_id:
        raise NoStripeCustomer()
    key = _api_key(api_key, customer)
    # plan changes: the portal switches only between mapped plans' approved prices.
    configuration = sync_portal_configuration(api_key=key).configuration_id
    session = stripe_gateway.create(
        "billing_portal.session",
        api_key=key,
        customer=customer.stripe_customer_id,
        return_url=return_url,
        configuration=configuration,
    )
    return PortalStart(url=str(session["url"]))
