"""What the kernia commands share: output that honours Django's ``-v 0/1/2``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand


class BillingCommand(BaseCommand):
    """``-v 0`` prints nothing (errors still go to stderr), ``-v 1`` (the default) the
    summary and warnings, ``-v 2`` progress and details as well."""

    verbosity = 1

    def execute(self, *args: Any, **options: Any) -> Any:
        self.verbosity = int(options.get("verbosity", 1))
        return super().execute(*args, **options)

    def say(self, message: str, *, level: int = 1, style: Callable[[str], str] | None = None):
        if self.verbosity >= level:
            self.stdout.write(style(message) if style else message)
