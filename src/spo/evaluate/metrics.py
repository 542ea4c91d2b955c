"""Evaluation metrics (pure Python): mean accuracy, unbiased pass@k, maj@k.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with n
samples of which c are correct, the unbiased estimate of "at least one of k samples
drawn without replacement is correct" is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

(the product form avoids huge binomials). It is 1 when n - c < k.

maj@k: majority vote over the FIRST k samples (in the given order). Samples whose answer
could not be parsed (None) still use up one of the k slots but cast no vote. Ties are
broken by earliest first occurrence among those k samples. The vote is correct when the
winning answer is one that was graded correct (some sample among the k with that answer
has correct=True). No vote at all (all None) counts as wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["maj_at_k", "mean_accuracy", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (1 <= k <= n, 0 <= c <= n)."""
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(
            f"pass_at_k needs n >= 1, 0 <= c <= n, 1 <= k <= n; got n={n}, c={c}, k={k}"
        )
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """1.0 if the majority answer among the first k samples is correct, else 0.0.

    answers[i] is sample i's parsed (normalised) answer or None; correct[i] its grade."""
    if len(answers) != len(correct):
        raise ValueError(f"answers ({len(answers)}) and correct ({len(correct)}) differ in length")
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj_at_k needs 1 <= k <= {len(answers)} samples; got k={k}")
    votes: dict[str, int] = {}  # insertion order = first occurrence
    graded_correct: set[str] = set()
    for answer, ok in zip(answers[:k], correct[:k]):
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        if ok:
            graded_correct.add(answer)
    if not votes:
        return 0.0
    # max() returns the first maximal item, i.e. the earliest-first-seen answer on ties
    winner = max(votes, key=votes.__getitem__)
    return 1.0 if winner in graded_correct else 0.0


def mean_accuracy(correct: Iterable[bool | float]) -> float:
    """Mean of per-sample grades (bools or scores in [0, 1]); raises on an empty input."""
    values = [float(x) for x in correct]
    if not values:
        raise ValueError("mean_accuracy of no samples")
    return sum(values) / len(values)
