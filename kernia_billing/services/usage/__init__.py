"""check, track and batch track: the only code that writes usage.

Correctness rests on three rules:

1. Usage changes only through one conditional ``UPDATE ... RETURNING`` that
   checks the limit, the current period and the grant in its ``WHERE`` clause,
   so the database decides under its own row lock: no read-modify-write, no
   overspend, no lost update, on PostgreSQL and SQLite alike.
2. The deduction and its ledger row commit together or not at all; a repeated
   idempotency key is caught by a unique constraint and answered with the first
   result.
3. A period reset is a conditional ``UPDATE`` on the old ``next_reset_at``, so it
   happens exactly once, and a deduction only applies when ``now`` falls inside
   the entitlement's current period, so usage after the boundary counts in the
   new period and the ledger invariant (usage = sum of events since
   ``period_start``) holds.

``check`` lives in :mod:`.check`, ``track`` in :mod:`.track`, ``track_batch`` in
:mod:`.batch`, their shared input validation in :mod:`.validation`; they are re-exported
here for the doors (REST, decorators, the Python API).
"""

from .batch import refusal, track_batch
from .check import check, denial_error
from .track import track

__all__ = ["check", "denial_error", "refusal", "track", "track_batch"]
