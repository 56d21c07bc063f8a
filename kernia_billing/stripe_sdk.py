"""Where the Stripe SDK sends requests: ``KERNIA_BILLING["STRIPE_API_BASE"]``.

Applied when the app is ready and again whenever ``KERNIA_BILLING`` changes (so
``override_settings`` works), to the module-level SDK and to new ``StripeClient``
instances (dj-stripe builds its own). ``None`` leaves the SDK's defaults alone, or
restores them after a base was applied.
"""

from __future__ import annotations

from typing import Any

import stripe
from stripe import _stripe_client

_SDK_DEFAULTS = {
    "api_base": stripe.api_base,
    "client_api_base": _stripe_client.DEFAULT_API_BASE,  # type: ignore[attr-defined]
}
_applied: list[str | None] = [None]


def apply_api_base() -> None:
    from django.conf import settings

    from .conf import billing_settings

    if not isinstance(getattr(settings, "KERNIA_BILLING", None) or {}, dict):
        return  # kernia_billing.E009 reports it
    base = billing_settings.STRIPE_API_BASE
    if base is None and _applied[0] is None:
        return  # never touched: leave whatever the project configured itself
    stripe.api_base = base or _SDK_DEFAULTS["api_base"]
    _stripe_client.DEFAULT_API_BASE = base or _SDK_DEFAULTS["client_api_base"]  # type: ignore[attr-defined]
    _applied[0] = base


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "KERNIA_BILLING":
        apply_api_base()
