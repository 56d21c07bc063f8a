from tests.lifecycle import plans, webhooks

__all__ = ["plans", "webhooks"]
