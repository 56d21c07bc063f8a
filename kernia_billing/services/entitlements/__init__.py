"""Per-customer entitlements: their rows (raw SQL), resets, and sync from the plan."""
