"""Training with per-step (in-run) attribution, checkpoint estimators, contributor weights."""
