"""Write a starter catalog file to edit and keep in version control.

Examples::

    python manage.py kernia_init_catalog                  # writes ./catalog.json
    python manage.py kernia_init_catalog billing/catalog.json
    python manage.py kernia_init_catalog catalog.json --force   # overwrite

The starter declares ``messages`` (metered), ``seats`` and ``sso``, a default Free
plan and a Pro plan sold by the Stripe prices with lookup keys ``pro_monthly`` and
``pro_annual``. Edit it, then ``kernia_sync_catalog`` and ``kernia_load_catalog``.
The format is described in the README ("The catalog file").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from kernia_billing.management.base import BillingCommand

STARTER = Path(__file__).resolve().parents[2] / "starter_catalog.json"


class Command(BillingCommand):
    help = "Write a starter catalog file (features and plans) to edit and load."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", nargs="?", default="catalog.json", help="Where to write.")
        parser.add_argument("--force", action="store_true", help="Overwrite an existing file.")

    def handle(self, *args: Any, path: str, force: bool, **options: Any) -> None:
        target = Path(path)
        if target.exists() and not force:
            raise CommandError(f"{target} exists; pass --force to overwrite it.")
        try:
            target.write_text(STARTER.read_text(encoding="utf-8"), encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot write {target}: {exc.strerror or exc}") from exc
        self.say(f"Wrote {target}.", style=self.style.SUCCESS)
        self.say(
            f"Next: python manage.py kernia_sync_catalog && "
            f"python manage.py kernia_load_catalog {target} --approve"
        )
