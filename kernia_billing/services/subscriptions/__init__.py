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
from .trials import notify_trial_will_end

__all__ = [
    "ChangeResult",
    "Preview",
    "cancel_subscription",
    "change_subscription",
    "notify_trial_will_end",
    "preview_change",
    "resume_subscription",
    "upcoming_invoice",
]
