"""The grants audit reads, all-time, only the ledger rows that drew from grants: a partial
index on each ledger of exactly those rows (before: a scan of the whole ledger and its
archive on every audit). Building it reads the table once, holding off writes to it
(0.5 s on a 10M-row ledger, measured; docs/benchmarks.md "Scale"); rows without draws
cost the index nothing.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("kernia_billing", "0010_ledger_storage"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="archivedusageevent",
            index=models.Index(
                condition=models.Q(
                    ("from_grants__gt", 0), ("draws__isnull", False), _connector="OR"
                ),
                fields=["id"],
                name="kernia_archived_drew",
            ),
        ),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(
                    ("from_grants__gt", 0), ("draws__isnull", False), _connector="OR"
                ),
                fields=["id"],
                name="kernia_usage_drew",
            ),
        ),
    ]
