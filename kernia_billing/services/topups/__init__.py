"""Top-ups: one-time Stripe prices that sell a pack of a feature (source ``topup``).

- :mod:`.packs`: which price sells which pack, and the Checkout line item.
- :mod:`.fulfil`: a paid ``mode=payment`` Checkout Session -> one grant per pack line,
  exactly once (idempotency key ``topup:<session>:<price>``), from the webhook
  (``checkout.session.completed``) or the checkout return page, whichever comes first.
- :mod:`.refunds`: ``charge.refunded`` in full revokes what is left of the session's
  packs; a partial refund changes no balance (see the README's policy).
"""
