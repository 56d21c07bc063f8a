"""The one way to reach Stripe: every Stripe SDK call in kernia_billing is made here.

What every call shares lives here once:

- the API key (:func:`api_key_for`: an explicit key, else the event's, else the
  project's key for the mode), and the pinned ``STRIPE_API_VERSION``;
- idempotency keys (:func:`create` and :func:`modify` take one);
- error translation (:func:`translated`): a Stripe that cannot be reached or answers
  5xx raises :class:`~kernia_billing.exceptions.StripeUnavailable`, a request Stripe
  refused raises :class:`~kernia_billing.exceptions.StripeRefused` (a subclass, same
  code and HTTP status), both with a sentence an operator can act on;
- answers as plain JSON data (:func:`plain`), never SDK objects.

Timeouts and retries are the SDK's (``stripe.max_network_retries`` and its default
HTTP client), configured once by the project. dj-stripe calls that may reach Stripe
on our behalf (``sync_from_stripe_data`` with an API key) go through :func:`mirror`.

To add a call (meters, invoices, subscription updates, portal configurations): add
the SDK class to :data:`RESOURCES` and call :func:`retrieve`, :func:`list_all`,
:func:`create` or :func:`modify` with its name. ``tests/test_architecture.py``
fails on any use of the ``stripe`` module outside this file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import stripe
from django.conf import settings
from djstripe.settings import djstripe_settings
from stripe import _stripe_client

from ..conf import billing_settings
from ..exceptions import StripeRefused, StripeUnavailable

Resource = Literal[
    "customer",
    "product",
    "price",
    "subscription",
    "checkout.session",
    "billing_portal.session",
    "webhook_endpoint",
    # billing meters (metering)
    "billing.meter",
    "billing.meter_event",
    "billing.meter_event_adjustment",
    # plan changes
    "invoice",
    "subscription_schedule",
    "billing_portal.configuration",
    # add-ons and top-ups
    "subscription_item",
    "charge",
    "refund",
]

#: The Stripe SDK resource behind each name the services use.
RESOURCES: dict[str, Any] = {
    "customer": stripe.Customer,
    "product": stripe.Product,
    "price": stripe.Price,
    "subscription": stripe.Subscription,
    "checkout.session": stripe.checkout.Session,
    "billing_portal.session": stripe.billing_portal.Session,
    "webhook_endpoint": stripe.WebhookEndpoint,
    # billing meters (metering)
    "billing.meter": stripe.billing.Meter,
    "billing.meter_event": stripe.billing.MeterEvent,
    "billing.meter_event_adjustment": stripe.billing.MeterEventAdjustment,
    # plan changes
    "invoice": stripe.Invoice,
    "subscription_schedule": stripe.SubscriptionSchedule,
    "billing_portal.configuration": stripe.billing_portal.Configuration,
    # add-ons and top-ups
    "subscription_item": stripe.SubscriptionItem,
    "charge": stripe.Charge,
    "refund": stripe.Refund,
}

# Stripe allows at most 100 objects per list page.
PAGE_SIZE = 100


# --- keys ------------------------------------------------------------------------------


def project_livemode(livemode: bool | None = None) -> bool:
    """``livemode``, or the project's mode (``STRIPE_LIVE_MODE``) when it is unknown."""
    return bool(djstripe_settings.STRIPE_LIVE_MODE if livemode is None else livemode)


def api_key_for(
    *, api_key: str | None = None, livemode: bool | None = None, event: Any = None
) -> str:
    """The secret key for a call: ``api_key`` when given, else the key of the webhook
    ``event`` (dj-stripe's ``default_api_key``), else the project's key for ``livemode``
    (``None``: dj-stripe's default key)."""
    if api_key:
        return api_key
    event_key = getattr(event, "default_api_key", None) if event is not None else None
    if event_key:
        return str(event_key)
    return djstripe_settings.get_default_api_key(livemode)


def _options(api_key: str | None, livemode: bool | None = None) -> dict[str, Any]:
    return {
        "api_key": api_key_for(api_key=api_key, livemode=livemode),
        "stripe_version": djstripe_settings.STRIPE_API_VERSION,
    }


# --- errors and data -------------------------------------------------------------------


def error_message(exc: stripe.StripeError) -> str:
    """A sentence an operator can act on."""
    detail = exc.user_message or str(exc) or type(exc).__name__
    if isinstance(exc, stripe.AuthenticationError):
        return (
            "Stripe rejected the API key; check STRIPE_TEST_SECRET_KEY / "
            f"STRIPE_LIVE_SECRET_KEY. Stripe said: {detail}"
        )
    if isinstance(exc, stripe.PermissionError):
        return f"The Stripe API key is not allowed to do this. Stripe said: {detail}"
    if isinstance(exc, stripe.APIConnectionError):
        return f"Could not reach Stripe at {stripe.api_base}: {detail}"
    status = f" (HTTP {exc.http_status})" if exc.http_status else ""
    return f"Stripe returned an error{status}: {detail}"


def translate(exc: stripe.StripeError) -> StripeUnavailable:
    """The project's error for a Stripe SDK error (raise it ``from exc``)."""
    message = error_message(exc)
    unreachable = isinstance(exc, stripe.APIConnectionError | stripe.APIError) or (
        exc.http_status is not None and exc.http_status >= 500
    )
    if unreachable:
        return StripeUnavailable(message)
    return StripeRefused(
        message,
        http_status=exc.http_status,
        not_found=isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404,
    )


@contextmanager
def translated() -> Iterator[None]:
    """Run a block that talks to Stripe; its Stripe errors become the project's."""
    try:
        yield
    except stripe.StripeError as exc:
        raise translate(exc) from exc


def plain(obj: Any) -> dict[str, Any]:
    """A StripeObject (or dict) as plain JSON data."""
    if obj is None:
        return {}
    if isinstance(obj, stripe.StripeObject):
        return json.loads(str(obj))  # type: ignore[no-any-return]
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"Not Stripe data: {type(obj).__name__}")


# --- calls -----------------------------------------------------------------------------


def retrieve(
    resource: Resource,
    object_id: str,
    *,
    api_key: str | None = None,
    expand: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The current state of one Stripe object."""
    params: dict[str, Any] = {"expand": list(expand)} if expand else {}
    with translated():
        return plain(RESOURCES[resource].retrieve(object_id, **params, **_options(api_key)))


def list_all(
    resource: Resource, *, api_key: str | None = None, **params: Any
) -> Iterator[dict[str, Any]]:
    """Every object of a list endpoint matching ``params``, page by page."""
    with translated():
        listing = RESOURCES[resource].list(limit=PAGE_SIZE, **params, **_options(api_key))
        for obj in listing.auto_paging_iter():
            yield plain(obj)


def create(
    resource: Resource,
    *,
    api_key: str | None = None,
    livemode: bool | None = None,
    idempotency_key: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Create a Stripe object; a retry with the same ``idempotency_key`` creates none."""
    if idempotency_key:
        params["idempotency_key"] = idempotency_key
    with translated():
        return plain(RESOURCES[resource].create(**params, **_options(api_key, livemode)))


def modify(
    resource: Resource,
    object_id: str,
    *,
    api_key: str | None = None,
    idempotency_key: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Update a Stripe object."""
    if idempotency_key:
        params["idempotency_key"] = idempotency_key
    with translated():
        return plain(RESOURCES[resource].modify(object_id, **params, **_options(api_key)))


def delete(
    resource: Resource,
    object_id: str,
    *,
    api_key: str | None = None,
    idempotency_key: str | None = None,
    **params: Any,
) -> dict[str, Any]:
    """Delete a Stripe object (a subscription item: an add-on removed)."""
    if idempotency_key:
        params["idempotency_key"] = idempotency_key
    with translated():
        return plain(RESOURCES[resource].delete(object_id, **params, **_options(api_key)))


# --- dj-stripe's mirror ----------------------------------------------------------------


def mirror(
    model: Any,
    data: Mapping[str, Any],
    *,
    api_key: str | None = None,
    as_sdk_object: Resource | None = None,
) -> Any:
    """Write Stripe data into dj-stripe's mirror (``model.sync_from_stripe_data``).

    dj-stripe may call Stripe meanwhile (to refetch related objects, or page through a
    subscription's items: pass ``as_sdk_object="subscription"``, it wants an SDK object
    then), so it gets the key, and its Stripe errors are translated like ours.
    """
    key = api_key_for(api_key=api_key)
    payload: Any = data
    if as_sdk_object is not None:
        payload = RESOURCES[as_sdk_object].construct_from(data, key)
    with translated():
        return model.sync_from_stripe_data(payload, api_key=key)


# --- where the SDK sends requests --------------------------------------------------------
# ``KERNIA_BILLING["STRIPE_API_BASE"]`` (the fake Stripe, a proxy): applied when the app
# is ready and whenever ``KERNIA_BILLING`` changes (so ``override_settings`` works), to
# the module-level SDK and to new ``StripeClient`` instances (dj-stripe builds its own).
# ``None`` leaves the SDK's defaults alone, or restores them after a base was applied.

_SDK_DEFAULTS = {
    "api_base": stripe.api_base,
    "client_api_base": _stripe_client.DEFAULT_API_BASE,  # type: ignore[attr-defined]
}
_applied: list[str | None] = [None]


def apply_api_base() -> None:
    if not isinstance(getattr(settings, "KERNIA_BILLING", None) or {}, dict):
        return  # kernia_billing.E009 reports it
    base = billing_settings.STRIPE_API_BASE
    if base is None and _applied[0] is None:
        return  # never touched: leave whatever the project configured itself
    stripe.api_base = base or _SDK_DEFAULTS["api_base"]
    _stripe_client.DEFAULT_API_BASE = base or _SDK_DEFAULTS["client_api_base"]  # type: ignore[attr-defined]
    _applied[0] = base


def on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "KERNIA_BILLING":
        apply_api_base()


# --- billing meters (metering) ---------------------------------------------------------


def create_meter_event(
    *,
    event_name: str,
    stripe_customer_id: str,
    value: int,
    timestamp: int,
    identifier: str,
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
    api_key: str | None = None,
) -> dict[str, Any]:
    """One v1 meter event. Stripe de-duplicates by ``identifier`` (24 h at least), so a
    resend of the same identifier bills once. No idempotency key on purpose: Stripe
    saves a 5xx under it and would replay that failure to every retry for 24 h."""
    return create(
        "billing.meter_event",
        api_key=api_key,
        event_name=event_name,
        payload={customer_key: stripe_customer_id, value_key: str(value)},
        identifier=identifier,
        timestamp=timestamp,
    )


def cancel_meter_event(
    *, event_name: str, identifier: str, api_key: str | None = None
) -> dict[str, Any]:
    """A meter event adjustment cancelling the event ``identifier`` (24 h window)."""
    return create(
        "billing.meter_event_adjustment",
        api_key=api_key,
        idempotency_key=f"cancel-{identifier}",
        event_name=event_name,
        type="cancel",
        cancel={"identifier": identifier},
    )


def meter_event_summaries(
    meter_id: str,
    *,
    stripe_customer_id: str,
    start_time: int,
    end_time: int,
    api_key: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Stripe's aggregated usage of one customer on one meter over ``[start, end)``."""
    with translated():
        listing = stripe.billing.Meter.list_event_summaries(
            meter_id,
            customer=stripe_customer_id,
            start_time=start_time,
            end_time=end_time,
            limit=PAGE_SIZE,
            **_options(api_key),
        )
        for obj in listing.auto_paging_iter():
            yield plain(obj)


# --- customer balance (usage corrections) ------------------------------------------------


def credit_customer_balance(
    stripe_customer_id: str,
    *,
    amount: int,
    currency: str,
    description: str,
    idempotency_key: str,
    metadata: Mapping[str, str] | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """A customer balance transaction of ``-amount`` (a credit Stripe applies to the
    customer's next invoices). The idempotency key makes a retry credit once."""
    if amount <= 0:
        raise ValueError("A credit is a positive amount.")
    with translated():
        return plain(
            stripe.Customer.create_balance_transaction(
                stripe_customer_id,
                amount=-amount,
                currency=currency,
                description=description[:350],
                metadata=dict(metadata or {}),
                idempotency_key=idempotency_key,
                **_options(api_key),
            )
        )


# --- plan changes ------------------------------------------------------------------------


def invoice_preview(*, api_key: str | None = None, **params: Any) -> dict[str, Any]:
    """Stripe's preview of an invoice (``POST /v1/invoices/create_preview``): nothing is
    created, so no idempotency key."""
    with translated():
        return plain(stripe.Invoice.create_preview(**params, **_options(api_key)))


def release_schedule(
    schedule_id: str, *, api_key: str | None = None, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Release a subscription schedule: the subscription stays as it is now."""
    extra = {"idempotency_key": idempotency_key} if idempotency_key else {}
    with translated():
        return plain(stripe.SubscriptionSchedule.release(schedule_id, **extra, **_options(api_key)))


def cancel_subscription_now(
    subscription_id: str, *, api_key: str | None = None, idempotency_key: str | None = None
) -> dict[str, Any]:
    """Cancel a subscription at once (``DELETE /v1/subscriptions/{id}``)."""
    extra = {"idempotency_key": idempotency_key} if idempotency_key else {}
    with translated():
        return plain(stripe.Subscription.cancel(subscription_id, **extra, **_options(api_key)))
