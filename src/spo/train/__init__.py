"""The training loop that runs sample -> estimate -> optimize -> evaluate."""
