"""Fixtures for the fake Stripe tests (no database needed)."""

from kernia_billing.testing.pytest_plugin import fake_stripe, fake_stripe_server

__all__ = ["fake_stripe", "fake_stripe_server"]
