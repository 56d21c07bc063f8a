"""PostgreSQL only: partition the usage ledger by month, keep partitions ahead, detach old months.

    python manage.py kernia_partition_ledger --print-sql                # what --apply runs
    python manage.py kernia_partition_ledger --apply --months-ahead 3   # convert (one transaction)
    python manage.py kernia_partition_ledger --create-partitions        # the monthly job (cron)
    python manage.py kernia_partition_ledger --detach-before 2026-06 --dry-run
    python manage.py kernia_partition_ledger                            # list the partitions

Every action is safe to run again: ``--apply`` on a partitioned ledger only creates the
partitions ahead, ``--create-partitions`` creates only those missing. Same code as
``kernia_billing.services.history.partitions``; its module doc says what changes.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.management.base import BillingCommand
from kernia_billing.services.history import partitions as ledger_partitions
from kernia_billing.services.history.partitions import PartitioningError


def _month(value: str) -> date:
    try:
        year, month = (int(part) for part in value.split("-"))
        return date(year, month, 1)
    except ValueError:
        raise CommandError(f"--detach-before takes a month as YYYY-MM, not {value!r}.") from None


class Command(BillingCommand):
    help = "Partition the usage ledger by month (PostgreSQL), create partitions ahead, detach."

    def add_arguments(self, parser: CommandParser) -> None:
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--print-sql", action="store_true", help="Print the statements --apply would run."
        )
        action.add_argument(
            "--apply", action="store_true", help="Partition the ledger, in one transaction."
        )
        action.add_argument(
            "--create-partitions",
            action="store_true",
            help="Create the missing partitions up to --months-ahead (run monthly).",
        )
        action.add_argument(
            "--detach-before",
            metavar="YYYY-MM",
            help="Detach the partitions of the months before this one (retention).",
        )
        parser.add_argument(
            "--months-ahead",
            type=int,
            default=ledger_partitions.MONTHS_AHEAD,
            help="Partitions kept after the current month (default 3).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="With --detach-before: check and count only."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["months_ahead"] < 0:
            raise CommandError("--months-ahead must be 0 or more.")
        try:
            self._handle(**options)
        except PartitioningError as error:
            raise CommandError(str(error)) from None

    def _handle(
        self,
        *,
        print_sql: bool,
        apply: bool,
        create_partitions: bool,
        detach_before: str | None,
        months_ahead: int,
        dry_run: bool,
        **options: Any,
    ) -> None:
        if print_sql:
            if ledger_partitions.is_partitioned():
                statements = ledger_partitions.create_partitions_sql(months_ahead=months_ahead)
            else:
                statements = ledger_partitions.conversion_sql(months_ahead=months_ahead)
            self.stdout.write("\n".join(["BEGIN;", *(f"{s};" for s in statements), "COMMIT;"]))
        elif apply:
            summary = ledger_partitions.partition_ledger(months_ahead=months_ahead)
            if summary.converted:
                self.say(
                    f"Partitioned the ledger into {len(summary.created)} monthly partition(s).",
                    style=self.style.SUCCESS,
                )
            else:
                self._created(summary.created, "The ledger was already partitioned; ")
        elif create_partitions:
            self._created(ledger_partitions.create_partitions(months_ahead=months_ahead), "")
        elif detach_before is not None:
            detached = ledger_partitions.detach_partitions(_month(detach_before), dry_run=dry_run)
            verb = "Would detach" if dry_run else "Detached"
            for month in detached:
                self.say(
                    f"{verb} {month.name}: {month.events} event(s), {month.archived} with grant "
                    "draws copied to the archive table."
                )
            tail = "" if dry_run or not detached else " Dump, then DROP TABLE, each as you need."
            self.say(f"{verb} {len(detached)} partition(s).{tail}", style=self.style.SUCCESS)
        else:
            found = ledger_partitions.partitions()
            if not found:
                self.say("The ledger is not partitioned (see --print-sql and --apply).")
            for part in found:
                self.say(f"{part.name}: {part.start:%Y-%m-%d} to {part.end:%Y-%m-%d}")

    def _created(self, created: list[ledger_partitions.Partition], prefix: str) -> None:
        names = ", ".join(p.name for p in created) or "none missing"
        self.say(f"{prefix}created {len(created)} partition(s): {names}.", style=self.style.SUCCESS)
