"""kernia-billing: enforceable product entitlements on top of a Stripe catalog.

The public Python API (``check``, ``track``, ``track_batch``, ``customer_state``,
``TrackRequest``, ``grant``, ``revoke``, ``adjust_usage``, ``reserve``, ``confirm``,
``release``, ``reserved``, and for plan changes ``preview_change``,
``change_subscription``, ``cancel_subscription``, ``resume_subscription``,
``upcoming_invoice``) lives in :mod:`kernia_billing.services` and is re-exported here
lazily, so importing the package does not import Django models before the app registry
is ready.
"""

from typing import Any

__version__ = "0.1.0.dev0"

_PUBLIC = {
    "check": "kernia_billing.services.usage.check",
    "track": "kernia_billing.services.usage.track",
    "track_batch": "kernia_billing.services.usage.batch",
    "TrackRequest": "kernia_billing.types",
    "customer_state": "kernia_billing.services.customers",
    "grant": "kernia_billing.services.grants.issue",
    "revoke": "kernia_billing.services.grants.issue",
    "adjust_usage": "kernia_billing.services.metering.corrections",
    "reserve": "kernia_billing.services.reservations",
    "confirm": "kernia_billing.services.reservations",
    "release": "kernia_billing.services.reservations",
    "reserved": "kernia_billing.services.reservations",
    # plan changes
    "preview_change": "kernia_billing.services.subscriptions",
    "change_subscription": "kernia_billing.services.subscriptions",
    "cancel_subscription": "kernia_billing.services.subscriptions",
    "resume_subscription": "kernia_billing.services.subscriptions",
    "upcoming_invoice": "kernia_billing.services.subscriptions",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module_path = _PUBLIC.get(name)
    if module_path is None:
        raise AttributeError(f"module 'kernia_billing' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(module_path), name)
