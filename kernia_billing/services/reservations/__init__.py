"""Reservations: hold balance before the work, settle with the actual amount.

The semantics are in :mod:`.holds`; giving holds back (release, expiry) in
:mod:`.giveback`, which check and track call when they refuse for balance. Names are
re-exported lazily so that import does not pull the usage services into
:mod:`.giveback`'s importers.
"""

from typing import Any

_NAMES = {
    "ReservationResult": "holds",
    "confirm": "holds",
    "list_reservations": "holds",
    "release": "holds",
    "reserve": "holds",
    "reserved": "holds",
    "customer_of": "holds",
    "expire_reservations": "giveback",
    "expire_due_holds": "giveback",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
