"""The usage ledger: one append-only row per accepted track."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import F, Q
from django.utils.translation import gettext_lazy as _

from .catalog import Feature
from .customers import BillingCustomer


class IdempotencyDigest(models.Func):
    """The (customer, idempotency key) pair as the ledger's unique index holds it.

    PostgreSQL: the MD5 of ``customer:key`` as a 16-byte ``uuid``, so the index costs
    24 bytes a row instead of the customer and the whole key (a 36-character key: 56).
    Two different pairs share a digest with odds of about 2^-128 per pair of keys (keys
    nobody crafted: a customer who builds an MD5 collision of two of its own keys gets
    its second one refused, nothing counted twice); the lookups recheck the real
    columns. Elsewhere (SQLite): the pair itself as text.
    ``IdempotencyDigest()`` is the row's; ``IdempotencyDigest(Value(c), Value(k))`` a
    pair's, for ``filter(digest__in=...)`` on the index.
    """

    arity = 2
    output_field = models.TextField()

    def __init__(self, customer: Any = None, key: Any = None) -> None:
        super().__init__(
            F("customer_id") if customer is None else customer,
            F("idempotency_key") if key is None else key,
        )

    def as_sql(
        self,
        compiler: Any,
        connection: Any,
        function: str | None = None,
        template: str | None = None,
        arg_joiner: str | None = None,
        **extra_context: Any,
    ) -> Any:
        # The customer id has no ':', so the text is one pair's only.
        return super().as_sql(
            compiler,
            connection,
            template="(%(expressions)s)",
            arg_joiner=" || ':' || ",
            **extra_context,
        )

    def as_postgresql(self, compiler: Any, connection: Any, **extra_context: Any) -> Any:
        return super().as_sql(
            compiler,
            connection,
            template="md5((%(expressions)s))::uuid",
            arg_joiner=")::text || ':' || (",
            **extra_context,
        )


#: The rows the grants audit reads, all-time (a grant outlives periods): those that drew
#: from a grant. Both ledgers index exactly this condition, so the audit reads the few
#: rows that drew, never the whole history; queries must use this very expression.
DREW_FROM_GRANTS = Q(from_grants__gt=0) | Q(draws__isnull=False)


class UsageEvent(models.Model):
    # No single-column indexes: the composite indexes below lead with the customer, and
    # a lone feature (or time) index would cost every insert for reads nothing makes.
    customer = models.ForeignKey(
        BillingCustomer, on_delete=models.CASCADE, related_name="usage_events", db_index=False
    )
    feature = models.ForeignKey(
        Feature, on_delete=models.PROTECT, related_name="kernia_usage_events", db_index=False
    )
    amount = models.BigIntegerField(_("amount"))
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # SHA-256 of (feature, amount, properties), its first 16 bytes: a replay with another
    # payload is a conflict. Empty when there is no key (nothing ever compares it then).
    request_fingerprint = models.BinaryField(max_length=32, blank=True, default=b"")
    # None when the track had none (a NULL costs nothing; '{}' cost 5 bytes and padding).
    properties = models.JSONField(null=True, blank=True, default=None)
    created_at = models.DateTimeField(_("time"))
    balance_after = models.BigIntegerField(_("balance after"))
    usage_after = models.BigIntegerField(_("usage after"))
    # What the event drew from grants other than the plan's, and from which:
    # ``[{"grant": 17, "amount": 2}, {"grant": null, "amount": 3}]`` (null: the plan's
    # grant, or overage). None when everything came from the plan's grant.
    from_grants = models.BigIntegerField(_("drawn from grants"), default=0, db_default=0)
    draws = models.JSONField(null=True, blank=True)
    # Credit pools: the event is on the pool (``amount`` credits); the feature used and
    # how many of its units.
    used_feature = models.ForeignKey(
        Feature,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="kernia_pool_usage_events",
        db_index=False,
    )
    units = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("usage event")
        verbose_name_plural = _("usage events")
        constraints = [
            # One row per (customer, key), refused by the database itself, so concurrent
            # first uses of a key are exact; over a 16-byte digest (see IdempotencyDigest).
            models.UniqueConstraint(
                IdempotencyDigest(),
                condition=Q(idempotency_key__isnull=False),
                name="kernia_billing_usage_idempotency_key",
            )
        ]
        indexes = [
            # Usage history (of all features: one range per feature, merged by
            # selectors.history_page; a customer has few features), the audit's and
            # renewals' sums since a period start, archival: customer + feature + time.
            # No customer + time index: it cost every row 37 bytes for reads this serves.
            models.Index(
                fields=["customer", "feature", "created_at"], name="kernia_usage_cust_feat_time"
            ),
            models.Index(fields=["id"], condition=DREW_FROM_GRANTS, name="kernia_usage_drew"),
        ]

    def __str__(self) -> str:
        return f"{self.feature_id} {self.amount:+d} @ {self.created_at:%Y-%m-%d %H:%M:%S}"
