"""Add-ons: recurring Stripe prices whose subscription items grant features.

- :mod:`.sync` mirrors the add-on items of the customer's subscription and keeps their
  grants (``amount x quantity`` per billing period) and seat limits in step with them.
- :mod:`.manage` adds, changes and removes an add-on item through Stripe.
"""
