"""``kernia_reset_due``: apply every due period reset now, set-based (a renewal storm).

    python manage.py kernia_reset_due                 # every entitlement whose reset is due
    python manage.py kernia_reset_due --batch-size 6000 --progress

Resets also happen lazily (the first check or track after a boundary pays its own);
run this from cron just after the boundaries many customers share (midnight UTC, the
first of the month) so that 10,000 customers renewing at once cost a few statements
per batch instead of a reset each on their next request. Safe beside live traffic,
renewal webhooks and itself: a reset applies only while its old boundary is still the
entitlement's (exactly once). Same code as
``kernia_billing.services.entitlements.renewals.reset_due()``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.management.base import BillingCommand
from kernia_billing.services.entitlements.renewals import BATCH_SIZE, reset_due


class Command(BillingCommand):
    help = "Apply every due period reset now, in batches (exactly once, beside live traffic)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=BATCH_SIZE,
            help=f"Entitlements per transaction (default {BATCH_SIZE}).",
        )
        parser.add_argument(
            "--progress", action="store_true", help="Print a line after every batch."
        )

    def handle(self, *args: Any, batch_size: int, progress: bool, **options: Any) -> None:
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def report(done: int, last_id: int) -> None:
            self.say(f"... {done} reset (last entitlement id {last_id})")

        count = reset_due(batch_size=batch_size, progress=report if progress else None)
        self.say(f"Reset {count} entitlement(s).", style=self.style.SUCCESS)
