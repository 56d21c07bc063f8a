"""A smaller ledger: the idempotency index over a digest, 16-byte fingerprints, NULL for
no properties, and no customer + time index (history reads customer + feature + time,
one range per feature).

Converts an existing ledger with set-based statements: one ``UPDATE`` of the ledger (and
of the archive and reservations) shortens the fingerprints, empties those of rows
without a key and turns '{}' properties into NULL; the new unique index computes the
digests of every keyed row as it is built. The old key index and the customer + time
index are dropped first so the ``UPDATE`` does not write to them.
"""

from django.db import migrations, models

import kernia_billing.models.usage

FINGERPRINT_BYTES = 16


def shorten_rows(apps, schema_editor):
    """Fingerprints keep their first 16 bytes, none without a key; '{}' properties: NULL.

    One ``UPDATE`` per table, touching only rows that change.
    """
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    if connection.vendor == "postgresql":
        first = f"substring(request_fingerprint from 1 for {FINGERPRINT_BYTES})"
        empty, no_properties = "''::bytea", "'{}'::jsonb"
    else:  # SQLite: substr() of a blob is a blob; JSON is text
        first = f"substr(request_fingerprint, 1, {FINGERPRINT_BYTES})"
        empty, no_properties = "X''", "'{}'"
    fingerprint = f"CASE WHEN idempotency_key IS NULL THEN {empty} ELSE {first} END"
    long = (
        f"(length(request_fingerprint) > {FINGERPRINT_BYTES} "
        "OR (idempotency_key IS NULL AND length(request_fingerprint) > 0))"
    )
    with connection.cursor() as cursor:
        for model in ("UsageEvent", "ArchivedUsageEvent"):
            table = quote(apps.get_model("kernia_billing", model)._meta.db_table)
            cursor.execute(
                f"UPDATE {table} SET request_fingerprint = {fingerprint}, "
                f"properties = CASE WHEN properties = {no_properties} THEN NULL "
                f"ELSE properties END WHERE {long} OR properties = {no_properties}"
            )
        table = quote(apps.get_model("kernia_billing", "Reservation")._meta.db_table)
        cursor.execute(
            f"UPDATE {table} SET request_fingerprint = {first} "
            f"WHERE length(request_fingerprint) > {FINGERPRINT_BYTES}"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("kernia_billing", "0009_addons_topups"),
    ]

    operations = [
        migrations.RemoveIndex(model_name="usageevent", name="kernia_usage_cust_time"),
        migrations.RemoveConstraint(
            model_name="usageevent",
            name="kernia_billing_usage_idempotency_key",
        ),
        migrations.AlterField(
            model_name="archivedusageevent",
            name="properties",
            field=models.JSONField(blank=True, default=None, null=True),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="properties",
            field=models.JSONField(blank=True, default=None, null=True),
        ),
        migrations.RunPython(shorten_rows, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="usageevent",
            constraint=models.UniqueConstraint(
                kernia_billing.models.usage.IdempotencyDigest(),
                condition=models.Q(("idempotency_key__isnull", False)),
                name="kernia_billing_usage_idempotency_key",
            ),
        ),
    ]
