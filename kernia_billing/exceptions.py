"""Domain errors. Each door translates them: the REST API maps ``code`` and ``status``."""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    """Base class. ``code`` is stable and machine-readable; ``status`` is the HTTP status."""

    code = "billing_error"
    status = 400
    default_message = "The billing request could not be completed."

    def __init__(self, message: str | None = None, *, fields: dict[str, Any] | None = None):
        self.message = message or self.default_message
        self.fields = fields or {}
        super().__init__(self.message)


class InvalidRequest(BillingError):
    code = "invalid_request"
    status = 400
    default_message = "The request is not valid."


class UnknownFeature(BillingError):
    code = "unknown_feature"
    status = 404
    default_message = "No such feature."


class UnknownCustomer(BillingError):
    code = "unknown_customer"
    status = 404
    default_message = "No such billing customer."


class InvalidOwner(BillingError, ValueError):
    """Not something that can be billed: ``None``, an unsaved instance (a ``ValueError``
    too, for code that caught the bare one)."""

    code = "invalid_owner"
    status = 400
    default_message = "A billing owner must be a saved user or organization."


class AnonymousOwner(InvalidOwner):
    """``check(request.user, ...)`` before the user signed in."""

    code = "not_authenticated"
    status = 401
    default_message = "An anonymous user has no billing customer; sign in first."


class UnknownPlan(BillingError):
    code = "unknown_plan"
    status = 404
    default_message = "No such plan."


class UnknownOwner(BillingError):
    """A REST request names an organization or user that is not there (or not yours)."""

    code = "unknown_owner"
    status = 404
    default_message = "No such organization or user."


class NoPlan(BillingError):
    """The customer has no plan at all (no entitling subscription and no default plan)."""

    code = "no_plan"
    status = 402
    default_message = "The customer has no plan."


class NotIncluded(BillingError):
    code = "not_included"
    status = 402
    default_message = "The customer's plan does not include this feature."


class InsufficientBalance(BillingError):
    code = "insufficient_balance"
    status = 402
    default_message = "Not enough balance left for this amount."

    def __init__(self, message: str | None = None, *, balance: int | None = None, **kwargs: Any):
        self.balance = balance
        super().__init__(message, **kwargs)


class NotTrackable(BillingError):
    code = "not_trackable"
    status = 400
    default_message = "Boolean features are switched on or off; they cannot be tracked."


class UsageBelowZero(BillingError):
    code = "usage_below_zero"
    status = 409
    default_message = "Usage cannot go below zero."


class IdempotencyConflict(BillingError):
    code = "idempotency_conflict"
    status = 409
    default_message = "This idempotency key was already used with a different payload."


class UnknownReservation(BillingError):
    code = "unknown_reservation"
    status = 404
    default_message = "No such reservation."


class ReservationExpired(BillingError):
    """Confirm after ``expiresAt``: the hold was given back; track the work if wanted."""

    code = "reservation_expired"
    status = 409
    default_message = "The reservation expired and its hold was given back."


class ReservationClosed(BillingError):
    """Confirm of a released reservation, release of a confirmed one, or a second confirm
    with another actual amount."""

    code = "reservation_closed"
    status = 409
    default_message = "The reservation is already closed."


class Contention(BillingError):
    """The same rows kept changing under a request; retrying it is safe."""

    code = "contention"
    status = 503
    default_message = "The balance kept changing under this request; retry it."


class StripeUnavailable(BillingError):
    code = "stripe_error"
    status = 502
    default_message = "Stripe could not be reached or refused the request."


class StripeRefused(StripeUnavailable):
    """Stripe answered and refused the request (4xx: bad key, no such object, invalid
    parameters). Same code and status as :class:`StripeUnavailable`, so every door
    answers as before; services that expect a refusal (e.g. an unknown id) catch this."""

    def __init__(
        self,
        message: str | None = None,
        *,
        http_status: int | None = None,
        not_found: bool = False,
        **kwargs: Any,
    ):
        self.http_status = http_status
        self.not_found = not_found
        super().__init__(message, **kwargs)


class NoStripeCustomer(BillingError):
    """Portal (or another Stripe-side action) for a customer that never went through checkout."""

    code = "no_stripe_customer"
    status = 409
    default_message = "This customer has no Stripe customer yet; subscribe through checkout first."


class AlreadySubscribed(BillingError):
    """Checkout for a customer whose subscription already entitles: the portal changes plans."""

    code = "already_subscribed"
    status = 409
    default_message = (
        "This customer already has a subscription; change plans in the billing portal."
    )


class CatalogError(BillingError):
    code = "catalog_error"
    status = 400


class NoSubscription(BillingError):
    """The change needs a live Stripe subscription: subscribe through checkout first."""

    code = "no_subscription"
    status = 409
    default_message = "This customer has no subscription to change; subscribe through checkout."


class SeatsInUse(BillingError):
    """Fewer seats than are in use were asked for."""

    code = "seats_in_use"
    status = 409
    default_message = "More seats are in use than the quantity asked for."
