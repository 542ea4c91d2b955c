"""pass@k against brute-force enumeration, maj@k ties and edge cases, mean accuracy."""

from __future__ import annotations

from itertools import combinations

import pytest

from spo.evaluate.metrics import maj_at_k, mean_accuracy, pass_at_k


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_known_values():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 = c / n
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k
    # large n stays finite: 1 - C(150,100)/C(200,100) is ~1
    assert 0.999 < pass_at_k(200, 50, 100) <= 1.0


@pytest.mark.parametrize("n,c,k", [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_maj_at_k_majority_and_prefix():
    answers = ["3", "4", "4", "3", None, "3"]
    correct = [True, False, False, True, False, True]
    assert maj_at_k(answers, correct, 1) == 1.0  # "3"
    assert maj_at_k(answers, correct, 3) == 0.0  # "4" wins 2-1
    assert maj_at_k(answers, correct, 6) == 1.0  # "3" wins 3-2


def test_maj_at_k_tie_goes_to_earliest_first_occurrence():
    correct_for_3 = lambda answers: [a == "3" for a in answers]  # noqa: E731
    a = ["3", "4", "4", "3"]
    assert maj_at_k(a, correct_for_3(a), 4) == 1.0  # tie 2-2, "3" seen first
    b = ["4", "3", "3", "4"]
    assert maj_at_k(b, correct_for_3(b), 4) == 0.0  # tie 2-2, "4" seen first
    c = [None, "5", "3", "3", "5"]  # tie 2-2, "5" first seen (index 1)
    assert maj_at_k(c, correct_for_3(c), 5) == 0.0


def test_maj_at_k_none_answers_do_not_vote():
    answers = [None, None, "7", None]
    assert maj_at_k(answers, [False, False, True, False], 4) == 1.0
    # None still uses a slot: first 2 samples give no vote at all -> wrong
    assert maj_at_k(answers, [False, False, True, False], 2) == 0.0
    assert maj_at_k([None, None, None], [False, False, False], 3) == 0.0


def test_maj_at_k_errors():
    with pytest.raises(ValueError):
        maj_at_k(["1"], [True, False], 1)
    with pytest.raises(ValueError):
        maj_at_k(["1", "2"], [True, False], 3)
    with pytest.raises(ValueError):
        maj_at_k(["1", "2"], [True, False], 0)


def test_mean_accuracy():
    assert mean_accuracy([True, False, True, True]) == 0.75
    assert mean_accuracy(x for x in [1.0, 0.0]) == 0.5
    with pytest.raises(ValueError):
        mean_accuracy([])
