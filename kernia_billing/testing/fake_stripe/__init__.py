"""A stateful fake of the Stripe API for offline tests and demos.

See :class:`~kernia_billing.testing.fake_stripe.server.FakeStripe`.
"""

from .server import FakeStripe, Fault, RecordedRequest, SdkConfiguration, configure_stripe_sdk
from .store import DEFAULT_API_VERSION, Store, StripeError
from .webhooks import DeliveryResult, sign_webhook_payload

__all__ = [
    "DEFAULT_API_VERSION",
    "DeliveryResult",
    "FakeStripe",
    "Fault",
    "RecordedRequest",
    "SdkConfiguration",
    "Store",
    "StripeError",
    "configure_stripe_sdk",
    "sign_webhook_payload",
]
