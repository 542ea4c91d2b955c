"""Stage 5: evaluation (accuracy, pass@k, maj@k)."""
