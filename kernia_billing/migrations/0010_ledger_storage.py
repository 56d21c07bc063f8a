"""A smaller ledger: the idempotency index over a digest, 16-byte fingerprints, and no
customer + time index (history reads customer + feature + time, one range per feature).

Converts an existing ledger with set-based statements: one ``UPDATE`` of the ledger (and
of the archive and reservations) shortens the fingerprints and empties those of rows
without a key, and the new unique index computes the digests of every keyed row as it
is built. The old key index and the customer + time index are dropped first so the
``UPDATE`` does not write to them.
"""

from django.db import migrations, models

import kernia_billing.models.usage

FINGERPRINT_BYTES = 16


def shorten_fingerprints(apps, schema_editor):
    """Fingerprints keep their first 16 bytes; a row without a key keeps none."""
    connection = schema_editor.connection
    quote = connection.ops.quote_name
    if connection.vendor == "postgresql":
        first = f"substring(request_fingerprint from 1 for {FINGERPRINT_BYTES})"
        empty = "''::bytea"
    else:  # SQLite: substr() of a blob is a blob
        first = f"substr(request_fingerprint, 1, {FINGERPRINT_BYTES})"
        empty = "X''"
    with connection.cursor() as cursor:
        for model, keyless_too in (
            ("UsageEvent", True),
            ("ArchivedUsageEvent", True),
            ("Reservation", False),
        ):
            table = quote(apps.get_model("kernia_billing", model)._meta.db_table)
            if keyless_too:
                cursor.execute(
                    f"UPDATE {table} SET request_fingerprint = CASE WHEN idempotency_key IS NULL "
                    f"THEN {empty} ELSE {first} END "
                    f"WHERE length(request_fingerprint) > {FINGERPRINT_BYTES} "
                    "OR (idempotency_key IS NULL AND length(request_fingerprint) > 0)"
                )
            else:
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
        migrations.RunPython(shorten_fingerprints, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="usageevent",
            constraint=models.UniqueConstraint(
                kernia_billing.models.usage.IdempotencyDigest(),
                condition=models.Q(("idempotency_key__isnull", False)),
                name="kernia_billing_usage_idempotency_key",
            ),
        ),
    ]
