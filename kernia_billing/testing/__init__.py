"""Testing tools shipped with kernia-billing.

* :class:`FakeStripe`: a local, stateful fake of the Stripe API that the real
  ``stripe`` SDK and dj-stripe can talk to (``python -m
  kernia_billing.testing.fake_stripe`` runs it standalone).
* :func:`configure_stripe_sdk`: point the SDK at it.
* :func:`sign_webhook_payload`: sign a webhook body like Stripe does;
  :func:`post_event` posts a signed event to dj-stripe's endpoint.
* :class:`override_plan`, :class:`override_balance`: a plan or a balance for one test.
* pytest fixtures (``fake_stripe``, ``stripe_settings``, ``webhook_endpoint``):
  ``pytest_plugins = ["kernia_billing.testing.pytest_plugin"]``.
"""

from .delivery import post_event, webhook_url
from .fake_stripe import FakeStripe, configure_stripe_sdk, sign_webhook_payload
from .overrides import override_balance, override_plan

__all__ = [
    "FakeStripe",
    "configure_stripe_sdk",
    "override_balance",
    "override_plan",
    "post_event",
    "sign_webhook_payload",
    "webhook_url",
]
