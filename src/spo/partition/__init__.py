"""Stage 2: cut responses into segments (SPO). Pure functions over per-token probabilities."""
