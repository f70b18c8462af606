"""glassbox (placeholder)."""
