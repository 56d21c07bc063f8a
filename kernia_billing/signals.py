"""Signals for host code. All are sent after the transaction that caused them commits.

- ``usage_tracked(sender, customer, feature, event_id, amount, balance, usage)``
- ``limit_reached(sender, customer, feature, balance)``: a track left no balance.
- ``entitlement_changed(sender, customer, features)``: plan or limits changed.
- ``subscription_changed(sender, customer, previous_plan, plan, status)``
- ``trial_will_end(sender, customer, trial_end)``: Stripe's
  ``customer.subscription.trial_will_end`` (three days before a trial ends).
"""

from django.dispatch import Signal

usage_tracked = Signal()
limit_reached = Signal()
entitlement_changed = Signal()
subscription_changed = Signal()
trial_will_end = Signal()
