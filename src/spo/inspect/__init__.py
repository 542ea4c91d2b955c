"""The pages behind `spo inspect` (spo.commands.inspect): `run_data` reads a run folder,
`page` assembles the one-file HTML page from `assets/`, `serve` serves a live run."""
