"""Retention: move usage events older than N closed periods out of the hot ledger.

    python manage.py kernia_archive_usage --keep-periods 3            # keep 3 closed periods
    python manage.py kernia_archive_usage --keep-periods 3 --dry-run  # only count them

Per entitlement that resets, events before the start of the period ``N`` periods before
the current one (rounded down to a UTC midnight) move, with their ids, to the
``kernia_billing_archivedusageevent`` table; entitlements that never reset keep all
their events. The audit (``kernia_reconcile``) keeps passing: usage counts only the
current period, the daily rollups keep archived days visible in history and
``daily=true``, the grants audit reads draws from both tables. Batched (one transaction
per batch of entitlements) and safe to interrupt and run again; run it from cron.
Same code as ``kernia_billing.services.history.archive.archive_usage()``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.management.base import BillingCommand
from kernia_billing.services.history.archive import archive_usage


class Command(BillingCommand):
    help = "Move usage events older than N closed periods to the archive table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--keep-periods",
            type=int,
            required=True,
            help="Closed periods to keep in the hot ledger (besides the current one).",
        )
        parser.add_argument(
            "--batch-size", type=int, default=200, help="Entitlements per transaction."
        )
        parser.add_argument("--dry-run", action="store_true", help="Count, move nothing.")

    def handle(
        self, *args: Any, keep_periods: int, batch_size: int, dry_run: bool, **options: Any
    ) -> None:
        if keep_periods < 0:
            raise CommandError("--keep-periods must be 0 or more.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")

        def report(done: int, last_id: int, moved: int) -> None:
            self.say(f"... {done} entitlements done (last id {last_id}), {moved} events", level=2)

        summary = archive_usage(
            keep_periods, batch_size=batch_size, dry_run=dry_run, progress=report
        )
        verb = "Would archive" if dry_run else "Archived"
        self.say(
            f"{verb} {summary.events} usage event(s) of {summary.entitlements} entitlement(s).",
            style=self.style.SUCCESS,
        )
