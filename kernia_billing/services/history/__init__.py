"""Usage history at scale: retention (archival of old ledger rows) and the opt-in
PostgreSQL partitioning of the ledger by month."""
