"""Top-K retrieval with seen-item exclusion and the protocol's metrics."""
