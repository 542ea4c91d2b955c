"""Evaluate a policy on held-out problems: k samples per problem -> accuracy, pass@k, maj@k.

`evaluate` samples and grades (it needs an engine); `summarize` is pure bookkeeping
over the per-problem rows, so results gathered from several processes can be merged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from spo.config import EvalConfig
from spo.evaluate.metrics import maj_at_k, mean_accuracy, pass_at_k
from spo.sample.engine import RolloutEngine, SamplingParams
from spo.tasks.scoring import decode_and_score


def evaluation_params(e: EvalConfig, response_budget: int, seed: int, stop: Sequence[str] = (),
                      **overrides: Any) -> SamplingParams:
    """The sampling settings of an evaluation: `eval.temperature` and `top_p`, up to
    `eval.max_new_tokens` or else the run's `response_budget` tokens, the run's stop
    strings; overrides that are not None (command-line flags) win."""
    params = SamplingParams(max_new_tokens=e.max_new_tokens or response_budget, temperature=e.temperature,
                            top_p=e.top_p, seed=seed, stop=tuple(stop))
    return dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class EvalResult:
    per_problem: list[dict[str, Any]]


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    task: Any,
    problems: list[Any],
    params: SamplingParams,
    k: int = 1,
    prompt_format: str = "chat",
    system_prompt: str | None = None,
    prompt_template: str | None = None,
) -> EvalResult:
    """Sample `k` responses per problem and grade them with the task's reward."""
    contexts = [task.prompt_ids(tokenizer, p, prompt_format, system_prompt, prompt_template) for p in problems]
    rollouts = engine.generate(contexts, params, n=k) if problems else []
    rows = []
    for problem, group in zip(problems, rollouts):
        texts, rewards = decode_and_score(tokenizer, task, [problem] * len(group), [r.response_ids for r in group],
                                          [r.truncated for r in group])
        answers = [None if r.truncated else task.extract(text) for r, text in zip(group, texts)]
        correct = [reward >= 1.0 for reward in rewards]
        lengths = [len(r.response_ids) for r in group]
        rows.append({
            "id": problem.id,
            "question": problem.question,
            "gold": problem.answer,
            "answers": answers,
            "correct": correct,
            "lengths": lengths,
            "truncated": [r.truncated for r in group],
            "responses": texts,
        })
    return EvalResult(rows)


def summarize(rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    """accuracy = mean correctness over all samples; pass@k and maj@k over problems."""
    if not rows:
        raise ValueError("no evaluation rows to summarize")
    all_correct = [c for r in rows for c in r["correct"]]
    lengths = [n for r in rows for n in r["lengths"]]
    out = {
        "accuracy": mean_accuracy(all_correct),
        f"pass@{k}": sum(pass_at_k(len(r["correct"]), sum(r["correct"]), k) for r in rows) / len(rows),
        f"maj@{k}": sum(maj_at_k(r["answers"], r["correct"], k) for r in rows) / len(rows),
        "response_len_mean": sum(lengths) / len(lengths),
        "truncated_frac": sum(t for r in rows for t in r["truncated"]) / len(lengths),
        "problems": float(len(rows)),
    }
    return out
