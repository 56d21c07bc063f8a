from tests.lifecycle import plans, stripe_settings, webhooks

__all__ = ["plans", "stripe_settings", "webhooks"]
