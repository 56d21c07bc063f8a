"""Billing overage with Stripe meters: the outbox, the sender, reconciliation, import."""
