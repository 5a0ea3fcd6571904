"""market_data: feed adapters; publishes market.tick."""
