"""`spo credit`: the ground-truth values on a policy whose values are known analytically,
the credit metrics on hand-made advantage arrays, and a tiny end-to-end run."""

from __future__ import annotations

import json
import math
import random

import pytest

from spo.evaluate.credit import (
    blame,
    blame_hit,
    bootstrap_differences,
    correlation_ceiling,
    credit_metrics,
    mean_and_se,
    pearson,
    sign_agreement,
    true_advantages,
    unit_estimates,
)
from spo.evaluate.ground_truth import prefix_values
from spo.sample.engine import Rollout, SamplingParams

# --- ground truth on a hand-built policy ------------------------------------------------
#
# The policy writes L = 4 tokens, each 1 with probability P else 0, and stops; the reward is
# 1 when every token is 1. From a prefix of t tokens the true value is P^(L - t) when the
# prefix is all ones, else 0; a prefix of L tokens is finished (its value is its reward).

L, P, PROMPT = 4, 0.8, [9, 9]


class CoinEngine:
    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.asked: list[tuple[list[int], int]] = []

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        out = []
        for c, cap in zip(contexts, max_new_tokens):
            self.asked.append((list(c), cap))
            group = []
            for _ in range(n):
                toks = [int(self.rng.random() < P) for _ in range(min(cap, L - (len(c) - len(PROMPT))))]
                group.append(Rollout(list(c), toks, [0.0] * len(toks), "eos"))
            out.append(group)
        return out

    def sync_weights(self):
        pass


def true_value(prefix: list[int]) -> float:
    return P ** (L - len(prefix)) if all(prefix) else 0.0


def test_ground_truth_matches_known_values_within_se():
    prefixes = [[], [1], [1, 1], [1, 0], [1, 1, 1], [0, 1, 1]]
    contexts = [PROMPT + p for p in prefixes]
    budgets = [L - len(p) for p in prefixes]

    def score(owners, conts, truncated):
        return [float(all(prefixes[i] + c) and not cut) for i, c, cut in zip(owners, conts, truncated)]

    chunks = []
    values, tokens = prefix_values(CoinEngine(), contexts, budgets, score, num_samples=2000,
                                   params=SamplingParams(max_new_tokens=L, seed=3), chunk_size=4,
                                   on_chunk=lambda idx, vs, n: chunks.append(idx))
    assert chunks == [[0, 1, 2, 3], [4, 5]]
    assert tokens == 2000 * sum(budgets)
    for p, v in zip(prefixes, values):
        q = true_value(p)
        assert v.samples == 2000
        assert abs(v.mean - q) <= 4 * max(v.se, 1e-12), (p, v, q)
        assert v.se == pytest.approx(math.sqrt(q * (1 - q) / 1999), rel=0.1, abs=1e-9)  # binomial SE


def test_ground_truth_budget_zero_is_scored_not_sampled():
    engine = CoinEngine()
    values, tokens = prefix_values(engine, [PROMPT + [1, 1, 1, 1]], [0], lambda o, c, t: [0.0] * len(o),
                                   num_samples=8, params=SamplingParams())
    assert engine.asked == [] and tokens == 0
    assert (values[0].mean, values[0].se) == (0.0, 0.0)


def test_true_advantages_of_the_coin_policy_telescope():
    prefix = [1, 1, 0, 1]  # the third token dooms it: A* = 0 - 0.8 there
    v = [true_value(prefix[:t]) for t in range(L)] + [0.0]
    adv, se = true_advantages(v, [0.01] * L + [0.0])
    assert adv == pytest.approx([P ** 3 - P ** 4, P ** 2 - P ** 3, -P ** 2, 0.0])
    assert sum(adv) == pytest.approx(v[-1] - v[0])
    assert se == pytest.approx([math.sqrt(2) * 0.01] * 3 + [0.01])


# --- metrics on hand-made arrays ------------------------------------------------------


def test_mean_and_se():
    assert mean_and_se([1, 0, 1, 0]) == pytest.approx((0.5, math.sqrt(0.25 * 4 / 3 / 4)))
    assert mean_and_se([1.0]) == (1.0, math.inf)
    with pytest.raises(ValueError):
        mean_and_se([])


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 1, 1], [1, 2, 3]) is None  # a constant estimate has no correlation
    assert pearson([1], [1]) is None


def test_sign_agreement_counts_clear_units_and_zero_as_half():
    est = [0.5, -0.1, 0.0, 0.3, 9.0]
    true = [0.4, 0.3, -0.5, -0.2, 0.01]
    se = [0.1, 0.1, 0.1, 0.05, 0.1]  # the last is not clear (|A*| <= 2 SE)
    agree, n = sign_agreement(est, true, se)
    assert n == 4
    assert agree == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    assert sign_agreement([1.0], [0.0], [0.0]) == (None, 0)


def test_unit_estimates_average_tokens():
    assert unit_estimates([1, 1, 4, 2], [0, 2, 4]) == [1.0, 3.0]
    assert unit_estimates([1, 2], [0, 1, 2]) == [1.0, 2.0]
    with pytest.raises(ValueError):
        unit_estimates([1, 2], [0, 1])


def test_blame_hit_with_ties():
    true = [0.0, -0.6, 0.1, -0.1]
    assert blame_hit([0.2, -1.0, 0.0, 0.1], true) == (1.0, 0.25)  # points at the drop
    assert blame_hit([-0.3, -0.3, -0.3, -0.3], true) == (0.25, 0.25)  # a constant estimate: chance
    assert blame_hit([-0.5, -0.5, 0.0, 0.0], true) == (0.5, 0.25)  # half its blame on the drop
    assert blame_hit([0.0, 0.0, -1.0, 0.0], true) == (0.0, 0.25)
    assert blame_hit([0.0, 1.0], [-0.5, -0.5]) == (1.0, 1.0)  # drop tied over both units
    assert blame([-0.5, -0.5, 0.0, 0.0], true) == (0.5, 0.25, True, 0.5)
    assert blame([0.0, 0.0, -1.0, 0.0], true) == (0.0, 0.25, False, 0.25)


def test_credit_metrics_pools_units_and_scores_blame_on_clear_wrong_responses():
    est = [[0.5, 0.5], [-1.0, 0.0, 0.0], [-0.2, -0.2]]
    true = [[0.3, 0.2], [-0.8, 0.1, 0.0], [-0.01, 0.0]]
    se = [[0.05, 0.05], [0.1, 0.1, 0.0], [0.1, 0.1]]
    m = credit_metrics(est, true, se, wrong=[False, True, True])
    assert m.units == 7
    assert m.ceiling == pytest.approx(correlation_ceiling([0.3, 0.2, -0.8, 0.1, 0.0, -0.01, 0.0], [x for r in se for x in r]))
    flat_e = [0.5, 0.5, -1.0, 0.0, 0.0, -0.2, -0.2]
    flat_t = [0.3, 0.2, -0.8, 0.1, 0.0, -0.01, 0.0]
    assert m.pearson == pytest.approx(pearson(flat_e, flat_t))
    assert m.mse == pytest.approx(sum((a - b) ** 2 for a, b in zip(flat_e, flat_t)) / 7)
    assert (m.sign_agreement, m.sign_units) == (1.0, 3)  # 0.3, 0.2 and -0.8 are clear
    # response 3's drop (-0.01) is within noise: only response 2 is scored for blame
    assert (m.blame_hit, m.blame_chance, m.blame_responses) == (1.0, pytest.approx(1 / 3), 1)
    assert (m.blame_covers, m.blame_share) == (1.0, pytest.approx(1 / 3))
    with pytest.raises(ValueError):
        credit_metrics([[1.0]], [[1.0, 2.0]], [[0.0, 0.0]])


def test_correlation_ceiling_matches_a_simulated_noisy_ground_truth():
    rng = random.Random(0)
    exact = [rng.gauss(0, 1) for _ in range(20000)]
    noisy = [a + rng.gauss(0, 0.5) for a in exact]
    ceiling = correlation_ceiling(noisy, [0.5] * len(noisy))
    assert ceiling == pytest.approx(pearson(exact, noisy), abs=0.01)
    assert ceiling == pytest.approx(1 / math.sqrt(1.25), abs=0.01)
    assert correlation_ceiling([1.0, 1.0], [0.1, 0.1]) is None
    assert correlation_ceiling([0.0, 0.1], [1.0, 1.0]) == 0.0  # all noise


# --- the command end to end, on the tiny random model ---------------------------------


def test_spo_credit_smoke_end_to_end(tmp_path, monkeypatch):
    from spo.cli import main

    from spo.evaluate import ground_truth_cache

    monkeypatch.setattr(ground_truth_cache, "cache_dir", lambda: tmp_path / "cache")  # the model cache stays shared
    out = tmp_path / "out"
    assert main(["credit", "--config", "credit-smoke", "--output-dir", str(out), "credit.cache=true"]) == 0
    result = json.loads((out / "credit.json").read_text())
    assert (out / "credit.md").read_text().startswith("# spo credit")
    assert (out / "credit_vs_samples.png").is_file()
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["grpo", "rloo", "spo_chain N=2", "vineppo N=2", "spo_tree", "ppo", "spo_chain N=2 group",
                          "spo_chain N=4 group adaptive 0.5x", "spo_chain N=2 lowest K=2"]
    assert rows["ppo"]["samples"] == 2 * 4 + 2 * 2 * 4  # the responses + its critic's 2 iterations of 2 prompts x 4
    assert rows["ppo"]["token"]["units"] == rows["grpo"]["token"]["units"]
    n = result["responses"]
    assert n == 2 * 4 and rows["grpo"]["samples"] == n and rows["grpo"]["tokens"] == result["response_tokens"]
    chain, group = rows["spo_chain N=2"], rows["spo_chain N=2 group"]
    assert chain["continuations"] == chain["samples"] - n and chain["value_mse"] is not None and chain["values"] > 0
    assert group["continuations"] <= chain["continuations"] and rows["grpo"]["continuations"] == 0
    adaptive = rows["spo_chain N=4 group adaptive 0.5x"]  # the same states as N=2 (same interval): 0.5 x 4 each at most
    assert 0 < adaptive["continuations"] <= chain["continuations"]
    assert rows["spo_chain N=2 lowest K=2"]["continuations"] <= 2 * 2 * n  # at most K states per response, N each
    assert rows["spo_chain N=2"]["samples"] >= n and rows["spo_chain N=2"]["tokens"] >= result["response_tokens"]
    assert rows["spo_tree"]["token"] is None and rows["spo_tree"]["samples"] == 2 * (2 + 4)
    assert rows["spo_tree"]["segment"]["units"] == 2 * (2 + 4)  # every edge of both trees
    assert rows["grpo"]["token"]["units"] >= result["response_tokens"] / 2  # stride 2
    assert result["bootstrap"]["baseline"] == "grpo" and set(result["bootstrap"]["intervals"]) == set(rows) - {"spo_tree"}
    gt = result["ground_truth"]
    assert gt["states"] > 0 and gt["states_sampled_now"] == gt["states"]
    # a second run takes every value from the cache
    assert main(["credit", "--config", "credit-smoke", "--output-dir", str(out), "credit.cache=true"]) == 0
    again = json.loads((out / "credit.json").read_text())
    assert again["ground_truth"]["states_sampled_now"] == 0
    assert [r["token"] for r in again["rows"]] == [r["token"] for r in result["rows"]]


@pytest.mark.parametrize("overrides, message", [
    (["credit.prompts=0"], "credit.prompts"),
    (["credit.estimators={x: [sampling.group_size=2]}"], "only algorithm.*, critic.* and iterations="),
    (["credit.estimators={x: [algorithm.estimator=nope]}"], "credit.estimators"),
    (["credit.bogus=1"], "bogus"),
])
def test_spo_credit_bad_config_exits_2(overrides, message, capsys):
    from spo.cli import main

    assert main(["credit", "--config", "credit-smoke", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_spo_credit_missing_preset_exits_2(capsys):
    from spo.cli import main

    assert main(["credit", "--config", "no-such-preset"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bootstrap_differences_are_paired_and_cover_the_truth():
    rng = random.Random(1)
    true, se, clusters, wrong = [], [], [], []
    for c in range(12):  # 12 prompts x 3 responses of 5 units
        for _ in range(3):
            row = [rng.gauss(0, 1) for _ in range(5)]
            true.append(row)
            se.append([0.1] * 5)
            clusters.append(c)
            wrong.append(True)
    exact = [list(r) for r in true]
    noisy = [[x + rng.gauss(0, 1) for x in r] for r in true]
    flat = [[sum(r) / 5] * 5 for r in true]
    out = bootstrap_differences({"flat": flat, "exact": exact, "noisy": noisy}, true, se, clusters, wrong,
                                baseline="flat", resamples=100, seed=0)
    assert out["exact"]["pearson"] == (pytest.approx(1.0), pytest.approx(1.0))
    assert out["flat"]["pearson_minus_baseline"] == (0.0, 0.0)  # paired: the baseline minus itself
    lo, hi = out["exact"]["pearson_minus_baseline"]
    assert 0 < lo <= hi  # exact advantages beat a per-response constant on every resample
    assert out["exact"]["blame_hit"] == (1.0, 1.0)
    lo, hi = out["noisy"]["pearson"]
    assert lo < pearson([x for r in noisy for x in r], [x for r in true for x in r]) < hi
    with pytest.raises(ValueError):
        bootstrap_differences({"a": flat}, true, se, clusters, wrong, baseline="b")
