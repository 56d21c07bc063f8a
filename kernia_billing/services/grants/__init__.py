"""Grants: the sources of balance beyond the plan's own grant.

- :mod:`.issue`: ``grant()`` / ``revoke()`` (staff adjustments, promotions, clawbacks,
  and the issuing step every other source uses), idempotent on a unique key.
- :mod:`.draw`: the consumption step track and batch track use when the plan's grant
  does not cover a track: plan first, then soonest-expiring grants, never-expiring last.
- :mod:`.expiry`: expiries recorded lazily, exactly once.
- :mod:`.rollovers`: the unused part of a period's plan grant carried forward at a reset.
- :mod:`.totals`: the entitlement's denormalized grant columns, and the breakdown.

Every writer here follows :mod:`kernia_billing.services.locking`: the entitlement row,
then the grants ascending by id, then inserts.
"""
