"""Self-service subscription changes: preview, change (plans, seats, interval),
cancel and resume, the upcoming invoice, and the billing portal configuration."""

from .change import (
    ChangeResult,
    Preview,
    cancel_subscription,
    change_subscription,
    preview_change,
    resume_subscription,
    upcoming_invoice,
)

__all__ = [
    "ChangeResult",
    "Preview",
    "cancel_subscription",
    "change_subscription",
    "preview_change",
    "resume_subscription",
    "upcoming_invoice",
]
