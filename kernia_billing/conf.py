"""Settings for kernia_billing, read lazily from ``settings.KERNIA_BILLING``.

Every value is looked up when it is used, never at import time, so
``override_settings(KERNIA_BILLING=...)`` works in tests.

    KERNIA_BILLING = {
        "ORGANIZATION_MODEL": "accounts.Organization",
        "IS_ORGANIZATION_MEMBER": "accounts.billing.is_member",
        "PAST_DUE_GRACE": True,
    }
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

#: Every status a Stripe subscription can have.
STRIPE_SUBSCRIPTION_STATUSES = frozenset(
    {
        "active",
        "trialing",
        "past_due",
        "paused",
        "unpaid",
        "incomplete",
        "incomplete_expired",
        "canceled",
    }
)

DEFAULTS: dict[str, Any] = {
    # "app_label.ModelName" of the host project's organization model, or None when
    # only users own billing customers.
    "ORGANIZATION_MODEL": None,
    # Dotted path to ``callable(user, organization) -> bool``: may ``user`` act for
    # ``organization``? Required when ORGANIZATION_MODEL is set.
    "IS_ORGANIZATION_MEMBER": None,
    # Keep entitlements while a subscription is ``past_due`` (Stripe is retrying).
    "PAST_DUE_GRACE": True,
    # Subscription statuses that entitle, besides ``past_due`` (see PAST_DUE_GRACE).
    # Every other status gives the default plan (or no plan when there is none):
    # ``paused`` (trial ended without a payment method, or paused collection),
    # ``unpaid`` (retries exhausted), ``incomplete`` (first payment not made yet),
    # ``incomplete_expired`` and ``canceled``. Valid values: STRIPE_SUBSCRIPTION_STATUSES.
    "ENTITLING_STATUSES": ("active", "trialing"),
    # Permission (app_label.codename) that lets staff act for any customer.
    "MANAGE_PERMISSION": "kernia_billing.manage_billing",
    # Largest absolute amount one track may carry.
    "MAX_TRACK_AMOUNT": 1_000_000_000,
    # Largest number of events in one batch track.
    "MAX_BATCH_SIZE": 1000,
    # A DATABASES alias (e.g. a read replica) for usage history reads only: GET
    # billing/usage, daily totals, the demo chart. check, track and every write always
    # use the default database. None: the default database.
    "HISTORY_DATABASE": None,
    # A track's free-form ``properties``: at most this many bytes of JSON, this many
    # keys (counted at every depth) and this many levels of objects/lists.
    "MAX_PROPERTIES_BYTES": 8192,
    "MAX_PROPERTIES_KEYS": 256,
    "MAX_PROPERTIES_DEPTH": 16,
    # ``track_usage`` decorator: count attempts that failed (non-2xx) too.
    "BILL_FAILED_ATTEMPTS": False,
    # Hosts that checkout/portal return URLs may point at, besides ALLOWED_HOSTS
    # (same patterns: "app.example.com", ".example.com"). A "*" in ALLOWED_HOSTS is
    # ignored for redirects, so a project serving any host lists its hosts here.
    "REDIRECT_ALLOWED_HOSTS": (),
    # Where the Stripe SDK (module-level calls and ``StripeClient``, so dj-stripe too)
    # sends requests; None keeps the SDK's own (Stripe). Point it at the fake Stripe
    # (``python -m kernia_billing.testing.fake_stripe``), e.g. "http://127.0.0.1:12111".
    "STRIPE_API_BASE": None,
    # Plan changes: what Stripe does when a plan's trial (``trialDays``) ends without a
    # payment method: None (Stripe's default: invoice, the subscription goes past_due),
    # "cancel" or "pause" (Stripe's trial_settings.end_behavior.missing_payment_method;
    # checkout then collects a payment method only if required).
    "TRIAL_END_WITHOUT_PAYMENT_METHOD": None,
    # Billing overage with Stripe meters (see README "Billing overage with Stripe meters").
    # Prefix of meter event identifiers; keep it unique per installation sharing a
    # Stripe account.
    "METER_IDENTIFIER_PREFIX": "kernia",
    # Send overage right after the track commits (the kernia_report_usage command
    # still sends whatever this misses).
    "REPORT_USAGE_ON_COMMIT": False,
    # Rows the sender claims per transaction, and its ceiling on meter events per second
    # (Stripe's documented v1 limit is 1,000/s per account).
    "METER_SEND_BATCH": 100,
    "METER_EVENTS_PER_SECOND": 1000,
    # Oldest unsent overage (seconds) before the health view and check W010 alarm.
    "METER_LAG_ALARM_SECONDS": 3600,
}


class BillingSettings:
    """Typed, lazy access to ``settings.KERNIA_BILLING`` with documented defaults."""

    def _get(self, name: str) -> Any:
        user_settings = getattr(settings, "KERNIA_BILLING", {}) or {}
        return user_settings.get(name, DEFAULTS[name])

    @property
    def ORGANIZATION_MODEL(self) -> str | None:
        return self._get("ORGANIZATION_MODEL")

    @property
    def IS_ORGANIZATION_MEMBER(self) -> Callable[[Any, Any], bool] | None:
        return _resolve_callable(self._get("IS_ORGANIZATION_MEMBER"))

    @property
    def PAST_DUE_GRACE(self) -> bool:
        return bool(self._get("PAST_DUE_GRACE"))

    @property
    def ENTITLING_STATUSES(self) -> frozenset[str]:
        statuses = set(self._get("ENTITLING_STATUSES"))
        if self.PAST_DUE_GRACE:
            statuses.add("past_due")
        return frozenset(statuses)

    @property
    def MANAGE_PERMISSION(self) -> str:
        return str(self._get("MANAGE_PERMISSION"))

    @property
    def MAX_TRACK_AMOUNT(self) -> int:
        return int(self._get("MAX_TRACK_AMOUNT"))

    @property
    def HISTORY_DATABASE(self) -> str | None:
        alias = self._get("HISTORY_DATABASE")
        return str(alias) if alias else None

    @property
    def MAX_BATCH_SIZE(self) -> int:
        return int(self._get("MAX_BATCH_SIZE"))

    @property
    def MAX_PROPERTIES_BYTES(self) -> int:
        return int(self._get("MAX_PROPERTIES_BYTES"))

    @property
    def MAX_PROPERTIES_KEYS(self) -> int:
        return int(self._get("MAX_PROPERTIES_KEYS"))

    @property
    def MAX_PROPERTIES_DEPTH(self) -> int:
        return int(self._get("MAX_PROPERTIES_DEPTH"))

    @property
    def BILL_FAILED_ATTEMPTS(self) -> bool:
        return bool(self._get("BILL_FAILED_ATTEMPTS"))

    @property
    def REDIRECT_ALLOWED_HOSTS(self) -> tuple[str, ...]:
        return tuple(self._get("REDIRECT_ALLOWED_HOSTS"))

    @property
    def STRIPE_API_BASE(self) -> str | None:
        value = self._get("STRIPE_API_BASE")
        return str(value).rstrip("/") if value else None

    @property
    def TRIAL_END_WITHOUT_PAYMENT_METHOD(self) -> str | None:
        value = self._get("TRIAL_END_WITHOUT_PAYMENT_METHOD")
        return str(value) if value else None

    @property
    def METER_IDENTIFIER_PREFIX(self) -> str:
        return str(self._get("METER_IDENTIFIER_PREFIX"))

    @property
    def REPORT_USAGE_ON_COMMIT(self) -> bool:
        return bool(self._get("REPORT_USAGE_ON_COMMIT"))

    @property
    def METER_SEND_BATCH(self) -> int:
        return int(self._get("METER_SEND_BATCH"))

    @property
    def METER_EVENTS_PER_SECOND(self) -> float:
        return float(self._get("METER_EVENTS_PER_SECOND"))

    @property
    def METER_LAG_ALARM_SECONDS(self) -> int:
        return int(self._get("METER_LAG_ALARM_SECONDS"))


def _resolve_callable(value: Any) -> Callable[..., Any] | None:
    if value is None or callable(value):
        return value
    return import_string(value)  # type: ignore[no-any-return]


billing_settings = BillingSettings()
