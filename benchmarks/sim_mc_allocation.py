"""Value error of SPO-chain's Monte-Carlo rules at equal continuations, on a simulated
policy whose state values are known (no model: the figures are about the allocation rules,
not about any policy's value distribution).

    python benchmarks/sim_mc_allocation.py [--states 400] [--repeats 20]

Each state's continuations score 1 with its true value q. The mix of q imitates what
credit-arith's episode logs show (many states already decided, a few open): 40% q in
{0, 1}, 30% q within 0.1 of 0 or 1, 30% q uniform in [0.2, 0.8]. Rules: fixed N (every
state N samples) and adaptive (`mc_allocation: adaptive`, a budget of mc_budget x N x
states, several mc_min_samples and mc_stop_samples), all through `estimate_chain_values`, as training calls it.
Reported per rule: continuations per state, value MSE against q, mean bias, and MSE on the
open states (q in [0.2, 0.8]) alone.
"""

from __future__ import annotations

import argparse
import random

from spo.estimate.chain_values import estimate_chain_values
from spo.estimate.mc_allocation import adaptive_allocation
from spo.sample.engine import Rollout, SamplingParams

PROMPT = [7]


class KnownValues:
    def __init__(self, q: list[float], seed: int):
        self.q, self.rng = q, random.Random(seed)

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        return [[Rollout(list(c), [int(self.rng.random() < self.q[c[-1]])], [0.0], "eos") for _ in range(n)]
                for c in contexts]


def true_values(states: int, rng: random.Random) -> list[float]:
    out = []
    for _ in range(states):
        u = rng.random()
        if u < 0.4:
            out.append(float(rng.random() < 0.5))
        elif u < 0.7:
            x = rng.uniform(0.0, 0.1)
            out.append(x if rng.random() < 0.5 else 1 - x)
        else:
            out.append(rng.uniform(0.2, 0.8))
    return out


def run(q: list[float], n: int, budget: float | None, seed: int, minimum: int = 2,
        stop: int = 2) -> tuple[list[float], int]:
    responses = [[s, 0] for s in range(len(q))]  # state s = prompt + [s]
    est = estimate_chain_values(
        KnownValues(q, seed), [PROMPT] * len(q), responses, [0.0] * len(q), list(range(len(q))),
        [[0, 1, 2]] * len(q), lambda i, resp, cut: float(resp[-1] == 1), num_samples=n,
        params=SamplingParams(max_new_tokens=4, seed=seed),
        allocate=None if budget is None else adaptive_allocation(n, budget, minimum, stop))
    return [v[1] for v in est.values], est.continuations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--states", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rules = [("fixed N=4", 4, None, 2, 2), ("fixed N=8", 8, None, 2, 2), ("fixed N=16", 16, None, 2, 2)]
    for minimum, stop in ((2, 2), (4, 4), (2, 4), (2, 6), (2, 8)):
        rules += [(f"adaptive min {minimum} stop {stop}, budget 4/state", 16, 0.25, minimum, stop),
                  (f"adaptive min {minimum} stop {stop}, budget 8/state", 16, 0.5, minimum, stop)]
    print(f"{args.states} states x {args.repeats} repeats\n")
    print("| rule | continuations/state | value MSE | bias | MSE on open states |\n|---|---:|---:|---:|---:|")
    for name, n, budget, minimum, stop in rules:
        spent = se = bias = open_se = 0.0
        count = open_count = 0
        for r in range(args.repeats):
            q = true_values(args.states, random.Random(r))
            v, c = run(q, n, budget, seed=1000 + r, minimum=minimum, stop=stop)
            spent += c
            for x, y in zip(v, q):
                se += (x - y) ** 2
                bias += x - y
                count += 1
                if 0.2 <= y <= 0.8:
                    open_se += (x - y) ** 2
                    open_count += 1
        print(f"| {name} | {spent / count:.2f} | {se / count:.4f} | {bias / count:+.4f} | {open_se / open_count:.4f} |")


if __name__ == "__main__":
    main()
