"""dj-stripe webhook receivers. Each one re-reads state and calls one service."""
