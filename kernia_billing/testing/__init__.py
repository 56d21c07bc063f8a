"""Testing tools shipped with kernia-billing.

* :class:`FakeStripe`: a local, stateful fake of the Stripe API that the real
  ``stripe`` SDK and dj-stripe can talk to (``python -m
  kernia_billing.testing.fake_stripe`` runs it standalone).
* :func:`configure_stripe_sdk`: point the SDK at it.
* :func:`sign_webhook_payload`: sign a webhook body like Stripe does.
* pytest fixtures: ``pytest_plugins = ["kernia_billing.testing.pytest_plugin"]``.
"""

from .fake_stripe import FakeStripe, configure_stripe_sdk, sign_webhook_payload

__all__ = ["FakeStripe", "configure_stripe_sdk", "sign_webhook_payload"]
