"""Usage history at scale: retention (archival of old ledger rows)."""
