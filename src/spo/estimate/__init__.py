"""Stage 3: advantage estimators (a registry of pure tensor functions)."""
