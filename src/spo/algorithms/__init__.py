"""Stage composition: one module per RL method, each turning an iteration's prompts into a
batch to train on (sample -> score -> [partition -> values] -> advantages -> mask).
Registered by name in `spo.algorithms.registry`."""
