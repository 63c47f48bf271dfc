"""The pay-per-use model endpoint: predictions, metering, receipts, settlement epochs."""
