"""The quick chaos run (the long one, with random moments too, is `python scripts/chaos.py`;
docs/reliability.md): real `kill -9`s of `spo train --resume auto`, `spo bench` and
`spo sft` at every point where one of their files is half written, each followed by the
same command again; the finished outputs must equal uninterrupted runs', and after every
kill every checkpoint must pass its manifest check and the newest must load."""

from __future__ import annotations

import dataclasses
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import chaos  # noqa: E402  (scripts/chaos.py)


def shorter(scenario, *overrides):
    """The scenario with fewer iterations / steps, to keep CI quick."""
    return dataclasses.replace(scenario, argv=lambda out: [*scenario.argv(out), *overrides])


def test_killed_runs_continue_and_lose_nothing(tmp_path):
    s = chaos.SCENARIOS
    cases = [  # (scenario, its kills in order: every point where the command half-writes a file)
        (shorter(s["train"], "iterations=3"),  # killed in iteration 1, 2, 2, 2, 2 (ckpt 2 in place), then done
         [{"kill_at": "metrics.write:2"}, {"kill_at": "episodes.write:2"}, {"kill_at": "checkpoint.write:1"},
          {"kill_at": "checkpoint.staged:1"}, {"kill_at": "checkpoint.commit:1"}]),
        (shorter(s["bench"], "run.iterations=1", "bench.methods={grpo: [algorithm.estimator=grpo], "
                 "rloo: [algorithm.estimator=rloo]}"),
         [{"kill_at": "bench.done:1"}, {"kill_at": "checkpoint.staged:1"}]),
        (shorter(s["sft"], "max_steps=10"), [{"kill_at": "checkpoint.commit:1"}, {"kill_at": "sft.publish:1"}]),
    ]

    def run(case):
        scenario, plans = case
        ref, seconds = chaos.reference(scenario, tmp_path)
        return plans, chaos.run_until_done(scenario, ref, seconds, tmp_path / scenario.name / "chain", len(plans),
                                           random.Random(0), plans=plans)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, cases))
    for (scenario, _), (plans, tally) in zip(cases, results):
        assert not tally.failures, (scenario.name, tally.failures)
        assert tally.tried == len(plans) and tally.survived == tally.tried, (scenario.name, tally)
