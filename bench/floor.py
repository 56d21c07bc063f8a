"""Hand-written "floor" endpoints: the least a DRF view can do for check and track.

Batch too: one ``UPDATE`` of the summed amount and one set-based ``INSERT`` of the
rows. They share the real endpoints' authentication and owner lookup cost model (one
query, no ORM model instances), so the ratio real/floor measures what
kernia_billing adds on top of the database round trips it cannot avoid. Their
statements go through the same :func:`~kernia_billing.services.prepared.statement_cursor`
as ours, so where the connection prepares statements, both sides are planned once.
"""

from __future__ import annotations

from django.contrib.contenttypes.models import ContentType
from django.db import connection, transaction
from django.urls import include, path
from django.utils import timezone
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from kernia_billing.models import Entitlement, Feature, UsageEvent
from kernia_billing.services.prepared import statement_cursor

ENTITLEMENT = Entitlement._meta.db_table
CUSTOMER = Entitlement._meta.get_field("customer").related_model._meta.db_table  # type: ignore[union-attr]
FEATURE = Feature._meta.db_table
EVENT = UsageEvent._meta.db_table


def _owner(request) -> tuple[int, str]:
    content_type = ContentType.objects.get_for_model(request.user)
    return content_type.pk, str(request.user.pk)


class FloorCheckView(APIView):
    """One SELECT: the entitlement row for (owner, feature)."""

    permission_classes = [IsAuthenticated]

    def post(self, request):
        owner_type, owner_id = _owner(request)
        with statement_cursor() as cursor:
            cursor.execute(
                f"SELECT e.included, e.usage, e.unlimited FROM {ENTITLEMENT} e "
                f"JOIN {CUSTOMER} c ON c.id = e.customer_id "
                f"JOIN {FEATURE} f ON f.id = e.feature_id "
                "WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s",
                [owner_type, owner_id, request.data["feature"]],
            )
            included, usage, unlimited = cursor.fetchone()
        balance = included - usage
        return Response({"allowed": unlimited or balance >= 1, "balance": balance})


class FloorTrackView(APIView):
    """One conditional UPDATE ... RETURNING plus one INSERT, in one transaction."""

    permission_classes = [IsAuthenticated]

    def post(self, request):
        owner_type, owner_id = _owner(request)
        amount = int(request.data.get("amount", 1))
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with transaction.atomic(), statement_cursor() as cursor:
            cursor.execute(
                f"UPDATE {ENTITLEMENT} SET usage = usage + %s "
                f"WHERE id = (SELECT e.id FROM {ENTITLEMENT} e "
                f"JOIN {CUSTOMER} c ON c.id = e.customer_id "
                f"JOIN {FEATURE} f ON f.id = e.feature_id "
                "WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = %s) "
                "AND usage + %s <= included RETURNING id, customer_id, feature_id, usage, included",
                [amount, owner_type, owner_id, request.data["feature"], amount],
            )
            row = cursor.fetchone()
            if row is None:
                return Response({"error": {"code": "insufficient_balance"}}, status=402)
            _, customer_id, feature_id, usage, included = row
            cursor.execute(
                f"INSERT INTO {EVENT} (customer_id, feature_id, amount, idempotency_key, "
                "request_fingerprint, properties, created_at, balance_after, usage_after) "
                "VALUES (%s, %s, %s, NULL, '', '{}', %s, %s, %s)",
                [customer_id, feature_id, amount, now, included - usage, usage],
            )
        return Response({"balance": included - usage, "usage": usage}, status=201)


class FloorBatchTrackView(APIView):
    """Batch: one conditional UPDATE of the summed amount, then one set-based INSERT of
    the events (one ledger row each, idempotency keys under the unique index)."""

    permission_classes = [IsAuthenticated]

    def post(self, request):
        owner_type, owner_id = _owner(request)
        events = request.data["events"]
        amounts = [int(event.get("amount", 1)) for event in events]
        keys = [event.get("idempotencyKey") for event in events]
        total = sum(amounts)
        moment = timezone.now()
        with transaction.atomic(), statement_cursor() as cursor:
            cursor.execute(
                f"UPDATE {ENTITLEMENT} SET usage = usage + %s "
                f"WHERE id = (SELECT e.id FROM {ENTITLEMENT} e "
                f"JOIN {CUSTOMER} c ON c.id = e.customer_id "
                f"JOIN {FEATURE} f ON f.id = e.feature_id "
                "WHERE c.owner_type_id = %s AND c.owner_id = %s AND f.key = 'messages') "
                "AND usage + %s <= included RETURNING customer_id, feature_id, usage, included",
                [total, owner_type, owner_id, total],
            )
            row = cursor.fetchone()
            if row is None:
                return Response({"error": {"code": "insufficient_balance"}}, status=402)
            customer_id, feature_id, usage, included = row
            usage_after, running = [], usage - total
            for amount in amounts:
                running += amount
                usage_after.append(running)
            cursor.execute(
                f"INSERT INTO {EVENT} (customer_id, feature_id, amount, idempotency_key, "
                "request_fingerprint, properties, created_at, balance_after, usage_after) "
                "SELECT %s, %s, a, k, '', '{}', %s, %s - u, u "
                "FROM unnest(%s::bigint[], %s::varchar[], %s::bigint[]) AS t(a, k, u) "
                "RETURNING id",
                [customer_id, feature_id, moment, included, amounts, keys, usage_after],
            )
            ids = [event_id for (event_id,) in cursor.fetchall()]
        results = [
            {"index": i, "ok": True, "status": 201, "eventId": event_id, "replayed": False}
            for i, event_id in enumerate(ids)
        ]
        return Response({"results": results})


urlpatterns = [
    path("floor/check", FloorCheckView.as_view(), name="floor-check"),
    path("floor/track", FloorTrackView.as_view(), name="floor-track"),
    path("floor/track/batch", FloorBatchTrackView.as_view(), name="floor-track-batch"),
    path("", include("example_project.urls")),
]
